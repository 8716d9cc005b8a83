//! `follow --explain-rules`: which nftables rule decided, from nftables tracing. (Being
//! written: issue 3.)
