//! The verdict panel: one verdict per flow (grouped as the text output groups them).

use super::style::*;
use crate::model::{Stage, Verdict};
use crate::views::output::group_verdicts;
use crate::views::tui::app::{DropPoint, View};
use ratatui::text::{Line, Span, Text};

/// Each flow: its status, name, counts and place, then the summary (the next step after its
/// `→`) wrapped under it, and its one-command fix when it has one. Flows that ended identically (`output::same_as`) are one entry: their
/// count, common name, summed counts and the times of their first and last packet.
pub(super) fn verdict_text(v: &View, width: usize) -> Text<'static> {
    if v.verdicts.is_empty() {
        return Text::from(Line::styled("no flow judged yet", dim()));
    }
    let mut lines = Vec::new();
    for g in group_verdicts(&v.verdicts, &v.verdict_times) {
        let first = g.first();
        let mut at = Vec::new();
        if let Some(s) = first.stage {
            at.push(s.name().to_string());
        }
        if let Some(h) = first.hook {
            at.push(h.to_string());
        }
        if let Some(d) = &first.device {
            at.push(d.clone());
        }
        if let Some(r) = &first.reason {
            at.push(r.clone());
        }
        let mut spans = vec![Span::styled(
            format!("{:<10}", first.status.name().to_uppercase()),
            status_style(first.status),
        )];
        if g.count() > 1 {
            spans.push(Span::styled(format!("{} flows ", g.count()), bold()));
        }
        spans.push(Span::styled(g.label(), bold()));
        spans.push(Span::raw(format!(
            "  requests {} replies {}  {}",
            g.requests(),
            g.replies(),
            at.join(" ")
        )));
        lines.push(Line::from(spans));
        if g.count() > 1 {
            let mut seen = format!("{:10}", "");
            if let Some((a, b)) = g.span {
                seen.push_str(&format!(
                    "first {}s, last {}s; ",
                    rel_secs(v, a),
                    rel_secs(v, b)
                ));
            }
            seen.push_str(&g.members_text(5));
            lines.push(Line::styled(seen, dim()));
        }
        for l in wrap(&g.summary(), width.saturating_sub(10)) {
            lines.push(Line::raw(format!("{:10}{l}", "")));
        }
        if let Some(f) = &first.fix {
            for l in wrap(&format!("fix: {f}"), width.saturating_sub(10)) {
                lines.push(Line::raw(format!("{:10}{l}", "")));
            }
        }
    }
    Text::from(lines)
}

/// The rule or route behind a drop, when the verdicts name one.
pub(super) fn rule_of(p: &DropPoint, verdicts: &[Verdict]) -> String {
    match (p.stage, p.hook, &p.route) {
        (Stage::Netfilter, Some(h), _) => verdicts
            .iter()
            .find(|v| v.hook == Some(h) && !v.chains.is_empty())
            .map(|v| {
                let chain = v
                    .chains
                    .iter()
                    .find(|c| c.contains("policy drop"))
                    .unwrap_or(&v.chains[0]);
                match &v.firewall {
                    Some(fw) => format!("{fw}: {chain}"),
                    None => chain.clone(),
                }
            })
            .unwrap_or_else(|| "-".into()),
        (Stage::Routing, _, Some(r)) => format!(
            "table {}: {}",
            r.table_name(),
            r.err_name().unwrap_or("route found")
        ),
        _ => "-".into(),
    }
}
