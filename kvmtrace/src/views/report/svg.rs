//! The pictures of the HTML report, as inline SVG: no script, no external resource, no `xmlns`
//! (HTML5 parses inline `<svg>` without it, and the report must not name any URL). Sizes are in
//! a `viewBox`, so a picture scales with the page. Every text goes through the HTML escaper.

use std::fmt::Write as _;

/// Boxes per row of the path picture; a longer path wraps onto the next row.
const PER_ROW: usize = 6;
const BOX_W: usize = 156;
const BOX_H: usize = 66;
const GAP: usize = 34;
const MARGIN: usize = 24;
/// Lines of notes (drops, rewrites) written under a box.
const NOTE_LINES: usize = 4;
const NOTE_H: usize = 14;

const BLUE: &str = "#0969da";
const GREEN: &str = "#1a7f37";
const RED: &str = "#cf222e";
const ORANGE: &str = "#bc4c00";
const GREY: &str = "#57606a";

/// Where the packets of a path stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// They went on (or the path is not the one that failed).
    No,
    /// Dropped here (a drop event at this hop).
    Dropped,
    /// Seen here last with no drop seen: the verdict's end of the road (left the host, or
    /// vanished after this hop).
    LastSeen,
}

/// One hop of the path picture.
pub struct Hop<'a> {
    pub label: &'a str,
    pub device: &'a str,
    pub packets: usize,
    /// `REASON at location` of the drops here.
    pub drops: &'a [String],
    /// `field from → to` of the rewrites done here.
    pub rewrites: &'a [String],
    pub stop: Stop,
}

fn text(o: &mut String, x: usize, y: usize, attrs: &str, s: &str) {
    let _ = write!(
        o,
        "<text x=\"{x}\" y=\"{y}\" {attrs}>{}</text>",
        html_escape(s)
    );
}

/// The lines written under a hop: its drops (reason, then where), rewrites, last-seen note.
fn notes(hop: &Hop) -> Vec<(String, &'static str)> {
    let mut notes: Vec<(String, &'static str)> = Vec::new();
    for d in hop.drops {
        match d.split_once(" at ") {
            Some((reason, at)) => {
                notes.push((format!("✕ dropped: {reason}"), RED));
                notes.push((format!("at {at}"), RED));
            }
            None => notes.push((format!("✕ dropped: {d}"), RED)),
        }
    }
    for r in hop.rewrites {
        notes.push((format!("✎ {r}"), BLUE));
    }
    if hop.stop == Stop::LastSeen {
        notes.push(("last seen here".into(), ORANGE));
    }
    if notes.len() > NOTE_LINES {
        let more = notes.len() - (NOTE_LINES - 1);
        notes.truncate(NOTE_LINES - 1);
        notes.push((format!("… {more} more (table below)"), GREY));
    }
    notes
}

/// The hops left to right (wrapping every [`PER_ROW`]), an arrow between each, the packets
/// counted in each box with a bar against the busiest hop, the stop point drawn red with a ✕,
/// the drop reasons and the rewrites written under the hop where they happen.
pub fn path(hops: &[Hop], caption: &str) -> String {
    let notes_of: Vec<Vec<(String, &str)>> = hops.iter().map(notes).collect();
    // Each row as tall as its boxes and the most notes under one of them.
    let mut row_y = vec![12];
    for row in notes_of.chunks(PER_ROW) {
        let lines = row.iter().map(Vec::len).max().unwrap_or(0);
        let last = *row_y.last().expect("a first row");
        row_y.push(last + BOX_H + 12 + lines * NOTE_H + 12);
    }
    let cols = hops.len().clamp(1, PER_ROW);
    let w = 2 * MARGIN + cols * BOX_W + (cols - 1) * GAP;
    let h = *row_y.last().expect("rows");
    let max = hops.iter().map(|h| h.packets).max().unwrap_or(0).max(1);
    let mut o = format!(
        "<svg class=\"path\" role=\"img\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" \
         style=\"max-width:100%;height:auto\" font-family=\"system-ui,sans-serif\" \
         aria-label=\"{}\"><title>{}</title>",
        html_escape(caption),
        html_escape(caption)
    );
    for (i, hop) in hops.iter().enumerate() {
        let (row, col) = (i / PER_ROW, i % PER_ROW);
        let x = MARGIN + col * (BOX_W + GAP);
        let y = row_y[row];
        let mid = y + BOX_H / 2;
        // The arrow in: from the previous box, or (first of a wrapped row) from the margin.
        if i > 0 {
            let x0 = if col == 0 { 2 } else { x - GAP + 2 };
            let _ = write!(
                o,
                "<line x1=\"{x0}\" y1=\"{mid}\" x2=\"{}\" y2=\"{mid}\" stroke=\"{GREY}\" \
                 stroke-width=\"1.5\"/><polygon points=\"{},{} {},{mid} {},{}\" fill=\"{GREY}\"/>",
                x - 6,
                x - 7,
                mid - 4,
                x - 1,
                x - 7,
                mid + 4
            );
        }
        // A row that goes on below: a stub out to the right margin.
        if col == PER_ROW - 1 && i + 1 < hops.len() {
            let _ = write!(
                o,
                "<line x1=\"{}\" y1=\"{mid}\" x2=\"{}\" y2=\"{mid}\" stroke=\"{GREY}\" \
                 stroke-width=\"1.5\" stroke-dasharray=\"3 2\"/>",
                x + BOX_W,
                x + BOX_W + MARGIN - 2
            );
        }
        let (fill, stroke, width, dash, bar) = match hop.stop {
            Stop::No => ("#f6f8fa", GREY, 1, "", BLUE),
            Stop::Dropped => ("#ffebe9", RED, 3, "", RED),
            Stop::LastSeen => ("#fff1e5", ORANGE, 2, " stroke-dasharray=\"6 3\"", ORANGE),
        };
        let class = match hop.stop {
            Stop::No => "hop",
            Stop::Dropped => "hop stop",
            Stop::LastSeen => "hop last-seen",
        };
        let _ = write!(
            o,
            "<g class=\"{class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" \
             rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{width}\"{dash}/>"
        );
        text(
            &mut o,
            x + 8,
            y + 18,
            "font-size=\"13\" font-weight=\"700\"",
            hop.label,
        );
        text(
            &mut o,
            x + 8,
            y + 35,
            "font-size=\"12\" font-family=\"ui-monospace,monospace\"",
            if hop.device.is_empty() {
                "-"
            } else {
                hop.device
            },
        );
        text(
            &mut o,
            x + 8,
            y + 52,
            "font-size=\"12\"",
            &format!(
                "{} packet{}",
                hop.packets,
                if hop.packets == 1 { "" } else { "s" }
            ),
        );
        let bar_w = (BOX_W - 16) * hop.packets / max;
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{bar_w}\" height=\"4\" fill=\"{bar}\"/>",
            x + 8,
            y + BOX_H - 9
        );
        // The stop's badge on the box's corner: a drop, or where the packets were last seen.
        let badge = match hop.stop {
            Stop::Dropped => Some((RED, '✕')),
            Stop::LastSeen => Some((ORANGE, '?')),
            Stop::No => None,
        };
        if let Some((fill, mark)) = badge {
            let (cx, cy) = (x + BOX_W - 4, y + 4);
            let _ = write!(
                o,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"10\" fill=\"{fill}\"/>\
                 <text x=\"{cx}\" y=\"{}\" font-size=\"13\" font-weight=\"700\" \
                 fill=\"#fff\" text-anchor=\"middle\">{mark}</text>",
                cy + 5
            );
        }
        let notes = &notes_of[i];
        for (n, (line, colour)) in notes.iter().enumerate() {
            text(
                &mut o,
                x + 2,
                y + BOX_H + 14 + n * NOTE_H,
                &format!("font-size=\"11\" fill=\"{colour}\""),
                line,
            );
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>");
    o
}

/// A lane of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Request,
    Reply,
    Drop,
}

/// One mark on the timeline: a packet first seen (request, reply) or dropped, at `secs` after
/// the trace's first event.
pub struct Mark {
    pub lane: Lane,
    pub secs: f64,
    /// The tooltip (`journey #3, +0.000123 s`).
    pub title: String,
}

/// Marks drawn per lane; a flood beyond it is summarised in the caption.
pub const MARKS_MAX: usize = 2000;

/// Requests, replies and drops on one time axis, a lane each: a gap in the replies or a
/// column of drops shows when things went wrong.
pub fn timeline(marks: &[Mark], caption: &str) -> String {
    const W: usize = 1000;
    const X0: usize = 90;
    const X1: usize = 980;
    const LANES: [(Lane, &str, &str, usize); 3] = [
        (Lane::Request, "requests", BLUE, 25),
        (Lane::Reply, "replies", GREEN, 55),
        (Lane::Drop, "drops", RED, 85),
    ];
    let span = marks.iter().map(|m| m.secs).fold(0.0_f64, f64::max);
    let x_of = |s: f64| {
        if span > 0.0 {
            X0 as f64 + (X1 - X0) as f64 * (s / span)
        } else {
            X0 as f64
        }
    };
    let mut o = format!(
        "<svg class=\"timeline\" role=\"img\" viewBox=\"0 0 {W} 130\" width=\"{W}\" \
         style=\"max-width:100%;height:auto\" font-family=\"system-ui,sans-serif\" \
         aria-label=\"{}\"><title>{}</title>",
        html_escape(caption),
        html_escape(caption)
    );
    for (lane, name, colour, y) in LANES {
        let n = marks.iter().filter(|m| m.lane == lane).count();
        text(
            &mut o,
            4,
            y + 4,
            &format!("font-size=\"12\" fill=\"{colour}\""),
            &format!("{name} ({n})"),
        );
        let _ = write!(
            o,
            "<line x1=\"{X0}\" y1=\"{y}\" x2=\"{X1}\" y2=\"{y}\" stroke=\"#d0d7de\"/>"
        );
        for m in marks.iter().filter(|m| m.lane == lane).take(MARKS_MAX) {
            let x = x_of(m.secs);
            let title = format!("<title>{}</title>", html_escape(&m.title));
            let _ = match lane {
                Lane::Drop => write!(
                    o,
                    "<g class=\"drop\" stroke=\"{colour}\" stroke-width=\"2\">{title}\
                     <line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\"/>\
                     <line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\"/></g>",
                    x - 4.0,
                    y - 4,
                    x + 4.0,
                    y + 4,
                    x - 4.0,
                    y + 4,
                    x + 4.0,
                    y - 4
                ),
                _ => write!(
                    o,
                    "<circle cx=\"{x:.1}\" cy=\"{y}\" r=\"4\" fill=\"{colour}\" \
                     fill-opacity=\"0.7\">{title}</circle>"
                ),
            };
        }
    }
    // The axis: five ticks from the first event to the last mark.
    let _ = write!(
        o,
        "<line x1=\"{X0}\" y1=\"105\" x2=\"{X1}\" y2=\"105\" stroke=\"{GREY}\"/>"
    );
    let digits = if span < 0.001 {
        6
    } else if span < 1.0 {
        4
    } else {
        2
    };
    for k in 0..=4 {
        let s = span * f64::from(k) / 4.0;
        let x = x_of(s).round() as usize;
        let _ = write!(
            o,
            "<line x1=\"{x}\" y1=\"102\" x2=\"{x}\" y2=\"108\" stroke=\"{GREY}\"/>"
        );
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        text(
            &mut o,
            x,
            122,
            &format!("font-size=\"11\" fill=\"{GREY}\" text-anchor=\"{anchor}\""),
            &format!("+{s:.digits$} s"),
        );
        if span == 0.0 {
            break;
        }
    }
    o.push_str("</svg>");
    o
}

/// HTML-escapes a text with askama's escaper, the one the page's template uses.
fn html_escape(s: &str) -> String {
    askama::filters::escape(s, askama::filters::Html)
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_text_is_escaped_in_the_pictures() {
        let hostile = "<script>x</script>\"&".to_string();
        let drops = [format!("{hostile} at {hostile}")];
        let rewrites = [hostile.clone()];
        let hops = [Hop {
            label: &hostile,
            device: &hostile,
            packets: 3,
            drops: &drops,
            rewrites: &rewrites,
            stop: Stop::Dropped,
        }];
        let marks = [Mark {
            lane: Lane::Drop,
            secs: 0.5,
            title: hostile.clone(),
        }];
        for svg in [path(&hops, &hostile), timeline(&marks, &hostile)] {
            assert!(!svg.contains("<script"), "{svg}");
            assert!(
                svg.contains("&#60;script&#62;x&#60;/script&#62;&#34;&#38;"),
                "{svg}"
            );
        }
    }

    #[test]
    fn a_long_path_wraps_and_every_hop_is_drawn_once() {
        let names: Vec<String> = (0..14).map(|i| format!("hop{i}")).collect();
        let hops: Vec<Hop> = names
            .iter()
            .map(|n| Hop {
                label: n,
                device: "br0",
                packets: 1,
                drops: &[],
                rewrites: &[],
                stop: Stop::No,
            })
            .collect();
        let svg = path(&hops, "p");
        assert_eq!(svg.matches("<g class=\"hop\">").count(), 14);
        // Six per row: three rows, the last one starts at the left margin.
        let w = 2 * MARGIN + PER_ROW * BOX_W + (PER_ROW - 1) * GAP;
        assert!(svg.contains(&format!("viewBox=\"0 0 {w} ")), "{svg}");
        assert!(
            svg.contains(&format!(
                "<rect x=\"{MARGIN}\" y=\"{}\"",
                12 + 2 * (BOX_H + 24)
            )),
            "{svg}"
        );
    }
}
