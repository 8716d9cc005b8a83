//! The drop-points panel: where packets were dropped, how often, the rule behind it.

use super::style::*;
use super::verdicts::rule_of;
use crate::views::tui::app::{App, DropPoint};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

pub(super) fn draw_drops(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let header = Row::new([
        "dir",
        "stage",
        "hook",
        "device",
        "reason",
        "rule",
        "count",
        "last seen",
    ])
    .style(bold());
    let block = Block::bordered().title(format!(" drop points ({}) ", v.drops.len()));
    if v.drops.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled("no drop seen", dim())).block(block),
            area,
        );
        return;
    }
    let mut drops: Vec<&DropPoint> = v.drops.iter().collect();
    drops.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ns.cmp(&a.last_ns)));
    let rows: Vec<Row> = drops
        .iter()
        .map(|p| {
            Row::new([
                Cell::from(dir_short(p.dir)),
                Cell::from(p.stage.name()),
                Cell::from(p.hook.map(|h| h.name()).unwrap_or("-")),
                Cell::from(p.device.clone()),
                Cell::from(Span::styled(p.reason.clone(), bold().fg(Color::Red))),
                Cell::from(rule_of(p, &v.verdicts)),
                Cell::from(format!("{:>5}", p.count)),
                Cell::from(ago(app, v, p.last_ns)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(3),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(22),
            Constraint::Fill(1),
            Constraint::Length(5),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(block);
    frame.render_widget(table, area);
}
