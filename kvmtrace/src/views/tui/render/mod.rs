//! Rendering: an [`App`] into a ratatui [`Frame`], nothing else. No I/O and no state of its own
//! (scroll offsets are derived from the selection), so the same `App` always draws the same
//! screen, on a terminal or on a `TestBackend`.

use super::app::{App, Mode};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

mod drops;
mod help;
mod journey;
mod packets;
mod path;
mod style;
mod verdicts;

use drops::*;
use help::*;
use journey::*;
use packets::*;
use path::*;
use style::*;
use verdicts::*;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let [status, body, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(status_line(app)), status);
    match &app.mode {
        Mode::Main => draw_main(frame, body, app),
        Mode::Journey { id, copy, scroll } => {
            let p = app.view().packet(*id).unwrap_or(copy);
            draw_journey(frame, body, app.view(), p, *scroll);
        }
    }
    frame.render_widget(Paragraph::new(hint_line(app)), hints);
    if app.help {
        draw_help(frame, area);
    }
}

fn status_line(app: &App) -> Line<'static> {
    let m = &app.meta;
    let s = &app.stats;
    let sep = || Span::styled(" │ ", dim());
    let mut spans = vec![
        Span::styled(" kvmtrace ", bold().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(" VM {} · tap {} → {}", m.vm, m.tap, m.dest)),
        sep(),
        Span::raw(format!("filter {}", m.filter)),
        sep(),
        Span::raw(elapsed(s.elapsed)),
        sep(),
        Span::raw(format!("{:.0} ev/s", s.events_per_sec)),
        sep(),
        Span::raw(format!("{} events", s.events)),
        sep(),
        Span::styled(
            format!("lost {}", s.lost),
            if s.lost > 0 {
                bold().fg(Color::Red)
            } else {
                Style::new()
            },
        ),
        sep(),
        Span::raw(format!("sampled out {}", s.sampled_out)),
    ];
    if app.is_paused() {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            format!(
                " PAUSED +{} events ",
                app.pushed.saturating_sub(app.pushed_at_pause)
            ),
            bold().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    Line::from(spans)
}

fn hint_line(app: &App) -> Line<'static> {
    if let Some(input) = &app.input {
        let mut spans = vec![
            Span::styled(" filter> ", bold().fg(Color::Cyan)),
            Span::raw(input.text.clone()),
            Span::styled("█", Style::new().fg(Color::Cyan)),
        ];
        match &input.error {
            Some(e) => spans.push(Span::styled(format!("  {e}"), bold().fg(Color::Red))),
            None => spans.push(Span::styled(
                "  icmp | tcp [PORT] | udp [PORT] | any · Enter apply · Esc cancel",
                dim(),
            )),
        }
        return Line::from(spans);
    }
    let keys: &[(&str, &str)] = match app.mode {
        Mode::Main => &[
            ("↑↓ PgUp PgDn", "select"),
            ("Enter", "inspect"),
            ("p", if app.is_paused() { "resume" } else { "pause" }),
            ("/", "filter"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Mode::Journey { .. } => &[
            ("Esc", "back"),
            ("↑↓ PgUp PgDn", "scroll"),
            ("p", if app.is_paused() { "resume" } else { "pause" }),
            ("/", "filter"),
            ("?", "help"),
            ("q", "quit"),
        ],
    };
    let mut spans = vec![Span::raw(" ")];
    for (k, what) in keys {
        spans.push(Span::styled(*k, bold().fg(Color::Cyan)));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

fn draw_main(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let width = area.width.saturating_sub(2).max(1) as usize;
    let path = path_lines(v, &app.meta.tap, width);
    let verdicts = verdict_text(v, width);
    let verdict_rows = verdicts.lines.len();
    let [path_area, verdict_area, drop_area, packet_area] = Layout::vertical([
        Constraint::Length(path.len() as u16 + 2),
        Constraint::Length((verdict_rows.clamp(1, 8) + 2) as u16),
        Constraint::Length(if v.drops.is_empty() {
            3
        } else {
            v.drops.len().min(6) as u16 + 3
        }),
        Constraint::Min(4),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(path).block(Block::bordered().title(" packet path ")),
        path_area,
    );
    frame.render_widget(
        Paragraph::new(verdicts).block(Block::bordered().title(" verdict per flow ")),
        verdict_area,
    );
    draw_drops(frame, drop_area, app);
    draw_packets(frame, packet_area, app);
}
