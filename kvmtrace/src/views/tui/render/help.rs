//! The help overlay (`?`).

use super::style::*;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

pub(super) fn draw_help(frame: &mut Frame, area: Rect) {
    let keys = [
        ("q, Ctrl-C", "quit (verdicts are printed after)"),
        (
            "p, space",
            "pause / resume the display (collection goes on)",
        ),
        ("↑ ↓ PgUp PgDn", "select a packet (journey view: scroll)"),
        ("Home / End", "newest / oldest packet"),
        ("Enter", "the selected packet's journey, hop by hop"),
        ("Esc", "back to the overview"),
        ("/", "filter: tcp 443 · udp 53 · icmp · any"),
        ("?", "this help"),
    ];
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<15}"), bold().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        " ■ marks the hop where packets stop; ✗N counts drops there.",
        dim(),
    ));
    let w = 66.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (any key closes) ")),
        popup,
    );
}
