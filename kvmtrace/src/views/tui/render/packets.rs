//! The recent-packets panel: one line per packet journey, its outcome.

use super::style::*;
use crate::model::event::{Point, TraceEvent};
use crate::model::Outcome;
use crate::views::tui::app::{App, Packet};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Cell, Row, Table, TableState};
use ratatui::Frame;

/// The headers a packet had when first seen (route lookups carry no packet headers).
pub(super) fn first_headers(p: &Packet) -> String {
    p.journey
        .hops
        .iter()
        .find(|h| h.point != Point::Fib && h.tuple.is_some())
        .map(TraceEvent::headers)
        .unwrap_or_else(|| "(no IPv4 header)".into())
}

pub(super) fn outcome_text(p: &Packet) -> (String, Style) {
    let first = p.journey.first_tuple();
    match p.journey.outcome() {
        Outcome::Dropped(s) => (
            format!(
                "DROPPED at {} on {} [{}]",
                s.hook
                    .map(|h| h.name().to_string())
                    .unwrap_or_else(|| s.stage.name().to_string()),
                s.device,
                s.reason
            ),
            bold().fg(Color::Red),
        ),
        Outcome::LeftHost { device, tuple } => {
            let src = match (tuple, first) {
                (Some(t), Some(f)) if t.src != f.src => format!(" as {}", t.src),
                _ => String::new(),
            };
            (
                format!("left the host on {device}{src}"),
                Style::new().fg(Color::Green),
            )
        }
        Outcome::LoopedBack { device, .. } => (
            format!("LOOPED BACK out of {device}"),
            bold().fg(Color::Magenta),
        ),
        Outcome::DeliveredToVm { device } => (
            format!("delivered to the VM ({device})"),
            Style::new().fg(Color::Green),
        ),
        Outcome::DeliveredLocally => ("taken by the host (INPUT)".into(), Style::new()),
        Outcome::InFlight { stage, device } => (
            format!(
                "{} {} {device}",
                if p.journey.closed {
                    "freed at"
                } else {
                    "last seen at"
                },
                stage.name()
            ),
            Style::new().fg(Color::Yellow),
        ),
    }
}

pub(super) fn draw_packets(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let visible = area.height.saturating_sub(3).max(1) as usize;
    let selected = app.selected_row();
    let offset = selected.map_or(0, |s| (s + 1).saturating_sub(visible));
    let rows: Vec<Row> = (offset..(offset + visible).min(v.packets.len()))
        .filter_map(|r| v.row(r))
        .map(|p| {
            let (status, style) = outcome_text(p);
            Row::new([
                Cell::from(format!("#{}", p.journey.id)),
                Cell::from(
                    p.journey
                        .hops
                        .first()
                        .map(|h| rel_secs(v, h.ts_ns))
                        .unwrap_or_default(),
                ),
                Cell::from(dir_short(p.journey.dir)),
                Cell::from(first_headers(p)),
                Cell::from(format!(
                    "{:>4}",
                    p.journey.hops.len() + p.hops_over_cap as usize
                )),
                Cell::from(Span::styled(status, style)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(3),
            Constraint::Fill(3),
            Constraint::Length(4),
            Constraint::Fill(2),
        ],
    )
    .header(Row::new(["#", "time", "dir", "packet", "hops", "status"]).style(bold()))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .highlight_symbol("▶ ")
    .block(Block::bordered().title(format!(
        " recent packets ({} kept, newest first; Enter: its journey) ",
        v.packets.len()
    )));
    let mut state = TableState::default().with_selected(selected.map(|s| s - offset));
    frame.render_stateful_widget(table, area, &mut state);
}
