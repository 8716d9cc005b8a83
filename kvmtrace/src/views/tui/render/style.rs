//! What every panel draws with: the dim and bold styles, a verdict status's colour, wrapping,
//! and how times and directions are written.

use super::super::app::{App, View};
use crate::model::event::Direction;
use crate::model::Status;
use ratatui::style::{Color, Modifier, Style};
use std::time::Duration;

pub(super) fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

pub(super) fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub(super) fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

pub(super) fn status_style(s: Status) -> Style {
    match s {
        Status::Delivered => bold().fg(Color::Green),
        Status::Dropped => bold().fg(Color::Red),
        Status::NoReply => bold().fg(Color::Yellow),
        Status::Misrouted => bold().fg(Color::Magenta),
        Status::NoTraffic => bold().fg(Color::DarkGray),
        Status::Blind => bold().fg(Color::Cyan),
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces where it can.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(10);
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let cur = lines.last_mut().expect("one line at least");
        let (n, w) = (cur.chars().count(), word.chars().count());
        if n > 0 && n + 1 + w > width {
            lines.push(word.to_string());
        } else {
            if n > 0 {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

/// How long ago kernel time `ns` was, on the caller's clock (`stats.elapsed`); without one,
/// the time into the run.
pub(super) fn ago(app: &App, v: &View, ns: u64) -> String {
    let since_first = Duration::from_nanos(ns.saturating_sub(v.t0.unwrap_or(ns)));
    match app.first_event_at {
        Some(first) if !app.stats.elapsed.is_zero() => {
            let ago = app.stats.elapsed.saturating_sub(first + since_first);
            format!("{:.0}s ago", ago.as_secs_f64())
        }
        _ => format!("+{:.1}s", since_first.as_secs_f64()),
    }
}

pub(super) fn dir_short(d: Direction) -> &'static str {
    match d {
        Direction::Request => "req",
        Direction::Reply => "rep",
    }
}

pub(super) fn rel_secs(v: &View, ts: u64) -> String {
    format!("+{:.6}", ts.saturating_sub(v.t0.unwrap_or(ts)) as f64 / 1e9)
}
