//! UI state: plain data, no I/O, every collection bounded.
//!
//! The follow loop pushes events at whatever rate the kernel delivers them; what is kept is the
//! last [`PACKET_CAP`] packets (each at most [`HOP_CAP`] hops), per-hop packet counters and the
//! drop points aggregated by place and reason. Pausing freezes a copy of that for display while
//! collection goes on underneath, so nothing is missed when it resumes.

use super::meta::{Action, TuiMeta, TuiStats};
use crate::model::event::{DevKind, Direction, NfHook, Point, Route, TraceEvent};
use crate::model::filter::PacketFilter;
use crate::model::{Journey, Model, Outcome, Stage, Verdict};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::collections::VecDeque;

/// Packets kept for the recent-packets list and the journey view.
pub const PACKET_CAP: usize = 500;
/// Hops kept per packet (a packet looping through the host has no natural end).
pub const HOP_CAP: usize = 64;
/// Distinct drop points kept (the least recently seen goes first).
pub const DROP_POINT_CAP: usize = 64;

/// Rows a PgUp/PgDn moves.
const PAGE: isize = 10;

/// A place on the path diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Tap,
    Bridge,
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Routing,
    Uplink,
}

pub(super) const NODES: usize = 9;

impl Node {
    pub(super) fn idx(self) -> usize {
        self as usize
    }

    /// The hop a packet is at when this event is seen; `None` for its end (drop, free).
    pub fn of(ev: &TraceEvent) -> Option<Node> {
        Some(match ev.point {
            Point::TapIngress | Point::TapEgress => Node::Tap,
            Point::NfEnter | Point::NfExit => Node::of_hook(ev.nf_hook?),
            Point::Fib => Node::Routing,
            Point::NetifReceive | Point::DevXmit => match ev.dev_kind {
                DevKind::Tap => Node::Tap,
                DevKind::Bridge => Node::Bridge,
                DevKind::Other => Node::Uplink,
            },
            Point::Drop | Point::Consume => return None,
        })
    }

    /// The node a drop is drawn at.
    pub(super) fn of_drop(stage: Stage, hook: Option<NfHook>) -> Option<Node> {
        Some(match stage {
            Stage::Tap => Node::Tap,
            Stage::Bridge => Node::Bridge,
            Stage::Routing => Node::Routing,
            Stage::Egress => Node::Uplink,
            Stage::Netfilter => Node::of_hook(hook?),
        })
    }

    /// The node of a netfilter hook.
    fn of_hook(hook: NfHook) -> Node {
        match hook {
            NfHook::Prerouting => Node::Prerouting,
            NfHook::Input => Node::Input,
            NfHook::Forward => Node::Forward,
            NfHook::Output => Node::Output,
            NfHook::Postrouting => Node::Postrouting,
        }
    }
}

pub(super) fn dir_idx(d: Direction) -> usize {
    match d {
        Direction::Request => 0,
        Direction::Reply => 1,
    }
}

/// One packet as the UI keeps it: the model's journey (its hops capped) and the hops reached.
#[derive(Clone, Debug)]
pub struct Packet {
    pub journey: Journey,
    /// Hops past [`HOP_CAP`], counted and not kept.
    pub hops_over_cap: u32,
    reached: u16,
}

/// Drops aggregated by direction, place and reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DropPoint {
    pub dir: Direction,
    pub stage: Stage,
    pub hook: Option<NfHook>,
    pub device: String,
    pub reason: String,
    /// The latest `kfree_skb` caller.
    pub location: Option<String>,
    /// Routing drops: the failed lookup.
    pub route: Option<Route>,
    pub count: u64,
    /// Kernel time of the latest drop (ns).
    pub last_ns: u64,
}

/// What is drawn: collected live, or a frozen copy while paused.
#[derive(Clone, Debug, Default)]
pub(super) struct View {
    /// Oldest first, sorted by journey id (the model numbers journeys in order of first sight).
    pub packets: VecDeque<Packet>,
    /// Packets that reached each node: `[direction][node]`.
    pub hop_counts: [[u64; NODES]; 2],
    /// Packets dropped at each node: `[direction][node]`.
    pub drop_counts: [[u64; NODES]; 2],
    pub drops: Vec<DropPoint>,
    pub verdicts: Vec<Verdict>,
    /// Each verdict's first and last packet (kernel ns), parallel to `verdicts` (may be
    /// shorter: unknown).
    pub verdict_times: Vec<Option<(u64, u64)>>,
    /// Kernel time of the first event.
    pub t0: Option<u64>,
    pub bridge: Option<String>,
    pub uplink: Option<String>,
    /// Events of packets already gone from the list (only their drops are still counted).
    pub late: u64,
}

impl View {
    fn push(&mut self, journey: usize, ev: &TraceEvent) {
        self.t0.get_or_insert(ev.ts_ns);
        if matches!(ev.point, Point::NetifReceive | Point::DevXmit) && !ev.device.is_empty() {
            let slot = match ev.dev_kind {
                DevKind::Bridge => Some(&mut self.bridge),
                DevKind::Other => Some(&mut self.uplink),
                DevKind::Tap => None,
            };
            if let Some(slot @ None) = slot {
                *slot = Some(ev.device.clone());
            }
        }
        let Some(i) = self.slot(journey, ev) else {
            self.late += 1;
            if ev.point == Point::Drop {
                let lone = Journey {
                    id: journey,
                    skb: ev.skb,
                    dir: ev.dir,
                    hops: vec![ev.clone()],
                    closed: true,
                };
                record_drop(&mut self.drops, &mut self.drop_counts, &lone, ev);
            }
            return;
        };
        let p = &mut self.packets[i];
        let d = dir_idx(p.journey.dir);
        if let Some(n) = Node::of(ev) {
            let bit = 1u16 << n.idx();
            if p.reached & bit == 0 {
                p.reached |= bit;
                self.hop_counts[d][n.idx()] += 1;
            }
        }
        let kept = p.journey.hops.len();
        // The end of a packet is kept past the cap: it says what became of it.
        if kept < HOP_CAP || (kept == HOP_CAP && ev.point == Point::Drop) {
            p.journey.hops.push(ev.clone());
        } else {
            p.hops_over_cap += 1;
        }
        if matches!(ev.point, Point::Drop | Point::Consume) {
            p.journey.closed = true;
        }
        if ev.point == Point::Drop {
            // A packet that died at a node reached it, whether or not a hook there saw it
            // first (the path hook set has no netfilter links: the drop names the hook).
            if let Some(n) = record_drop(&mut self.drops, &mut self.drop_counts, &p.journey, ev) {
                let bit = 1u16 << n.idx();
                if p.reached & bit == 0 {
                    p.reached |= bit;
                    self.hop_counts[d][n.idx()] += 1;
                }
            }
        }
    }

    /// Index of the packet `journey` in the list, created when new; `None` when it was already
    /// dropped from the list.
    fn slot(&mut self, journey: usize, ev: &TraceEvent) -> Option<usize> {
        match self
            .packets
            .binary_search_by_key(&journey, |p| p.journey.id)
        {
            Ok(i) => Some(i),
            Err(0) if self.packets.len() >= PACKET_CAP => None,
            Err(mut i) => {
                if self.packets.len() >= PACKET_CAP {
                    self.packets.pop_front();
                    i -= 1;
                }
                self.packets.insert(
                    i,
                    Packet {
                        journey: Journey {
                            id: journey,
                            skb: ev.skb,
                            dir: ev.dir,
                            hops: Vec::new(),
                            closed: false,
                        },
                        hops_over_cap: 0,
                        reached: 0,
                    },
                );
                Some(i)
            }
        }
    }

    /// The packet at row `row` of the list (newest first).
    pub fn row(&self, row: usize) -> Option<&Packet> {
        self.packets
            .len()
            .checked_sub(row + 1)
            .and_then(|i| self.packets.get(i))
    }

    /// The row of packet `journey` (newest first).
    fn row_of(&self, journey: usize) -> Result<usize, usize> {
        let n = self.packets.len();
        self.packets
            .binary_search_by_key(&journey, |p| p.journey.id)
            .map(|i| n - 1 - i)
            .map_err(|i| n.saturating_sub(i))
    }

    pub fn packet(&self, journey: usize) -> Option<&Packet> {
        self.packets
            .binary_search_by_key(&journey, |p| p.journey.id)
            .ok()
            .map(|i| &self.packets[i])
    }
}

/// Counts the drop that ends journey `j` at its node and in its drop point; returns the node.
fn record_drop(
    drops: &mut Vec<DropPoint>,
    drop_counts: &mut [[u64; NODES]; 2],
    j: &Journey,
    ev: &TraceEvent,
) -> Option<Node> {
    let Outcome::Dropped(site) = j.outcome() else {
        return None;
    };
    let d = dir_idx(j.dir);
    let node = Node::of_drop(site.stage, site.hook);
    if let Some(n) = node {
        drop_counts[d][n.idx()] += 1;
    }
    let same = |p: &&mut DropPoint| {
        p.dir == j.dir
            && p.stage == site.stage
            && p.hook == site.hook
            && p.device == site.device
            && p.reason == site.reason
    };
    if let Some(p) = drops.iter_mut().find(same) {
        p.count += 1;
        p.last_ns = p.last_ns.max(ev.ts_ns);
        p.location = site.location.or(p.location.take());
        if site.route.is_some() {
            p.route = site.route;
        }
        return node;
    }
    if drops.len() >= DROP_POINT_CAP {
        if let Some(oldest) = (0..drops.len()).min_by_key(|&i| drops[i].last_ns) {
            drops.remove(oldest);
        }
    }
    drops.push(DropPoint {
        dir: j.dir,
        stage: site.stage,
        hook: site.hook,
        device: site.device,
        reason: site.reason,
        location: site.location,
        route: site.route,
        count: 1,
        last_ns: ev.ts_ns,
    });
    node
}

/// Which packet is selected in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Selection {
    /// The newest packet, whichever it is.
    Newest,
    /// This journey, wherever it moves as new packets arrive.
    Journey(usize),
}

/// What fills the screen below the status line.
#[derive(Clone, Debug)]
pub(super) enum Mode {
    Main,
    /// One packet's journey; the copy is shown if the packet leaves the list meanwhile.
    Journey {
        id: usize,
        copy: Box<Packet>,
        scroll: u16,
    },
}

/// The `/` input line.
#[derive(Clone, Debug, Default)]
pub(super) struct FilterInput {
    pub text: String,
    pub error: Option<String>,
}

/// The whole UI state. No I/O: events, verdicts, counters and keys come in through methods.
#[derive(Debug)]
pub struct App {
    pub(super) meta: TuiMeta,
    pub(super) stats: TuiStats,
    live: View,
    frozen: Option<Box<View>>,
    /// Events pushed in total, and when the pause began.
    pub(super) pushed: u64,
    pub(super) pushed_at_pause: u64,
    /// `stats.elapsed` when the first event came: puts kernel times on the caller's clock.
    pub(super) first_event_at: Option<std::time::Duration>,
    pub(super) selection: Selection,
    pub(super) mode: Mode,
    pub(super) input: Option<FilterInput>,
    pub(super) help: bool,
}

impl App {
    pub fn new(meta: TuiMeta) -> Self {
        App {
            meta,
            stats: TuiStats::default(),
            live: View::default(),
            frozen: None,
            pushed: 0,
            pushed_at_pause: 0,
            first_event_at: None,
            selection: Selection::Newest,
            mode: Mode::Main,
            input: None,
            help: false,
        }
    }

    /// One event, with the number of the journey the model put it in (`Model::push`).
    pub fn push(&mut self, journey: usize, ev: &TraceEvent) {
        self.pushed += 1;
        self.first_event_at.get_or_insert(self.stats.elapsed);
        self.live.push(journey, ev);
    }

    /// The verdicts of the flows so far (`Model::verdicts`), replacing the previous ones.
    /// Flow times are unknown this way: grouped flows show no first/last time.
    pub fn set_verdicts(&mut self, v: Vec<Verdict>) {
        self.live.verdicts = v;
        self.live.verdict_times.clear();
    }

    /// The verdicts of the flows so far with the model they came from, which gives each flow's
    /// first and last packet for the grouped lines of the verdict panel.
    pub fn set_judged(&mut self, model: &Model, v: Vec<Verdict>) {
        self.live.verdict_times = crate::views::output::flow_times(model, &v);
        self.live.verdicts = v;
    }

    pub fn set_stats(&mut self, s: TuiStats) {
        self.stats = s;
    }

    /// The filter shown in the status line (the caller's word after it applied a `SetFilter`,
    /// or the old one back if it could not).
    pub fn set_filter_label(&mut self, label: impl Into<String>) {
        self.meta.filter = label.into();
    }

    pub fn meta(&self) -> &TuiMeta {
        &self.meta
    }

    pub fn is_paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// Packets kept (≤ [`PACKET_CAP`]).
    pub fn retained_packets(&self) -> usize {
        self.live.packets.len()
    }

    /// Hops kept over all packets (≤ [`PACKET_CAP`] × ([`HOP_CAP`] + 1)).
    pub fn retained_hops(&self) -> usize {
        self.live.packets.iter().map(|p| p.journey.hops.len()).sum()
    }

    /// Drop points as aggregated so far (live, also while paused).
    pub fn drop_points(&self) -> &[DropPoint] {
        &self.live.drops
    }

    /// Packets that reached `node` in direction `dir` (live, also while paused).
    pub fn hop_count(&self, dir: Direction, node: Node) -> u64 {
        self.live.hop_counts[dir_idx(dir)][node.idx()]
    }

    /// The journey shown by the journey view, if it is open.
    pub fn inspected(&self) -> Option<usize> {
        match &self.mode {
            Mode::Journey { id, .. } => Some(*id),
            Mode::Main => None,
        }
    }

    /// What is drawn: the frozen copy while paused, else the live state.
    pub(super) fn view(&self) -> &View {
        self.frozen.as_deref().unwrap_or(&self.live)
    }

    /// Row of the selected packet in the list (newest first), if the list is not empty.
    pub(super) fn selected_row(&self) -> Option<usize> {
        let v = self.view();
        if v.packets.is_empty() {
            return None;
        }
        Some(match self.selection {
            Selection::Newest => 0,
            Selection::Journey(id) => match v.row_of(id) {
                Ok(r) => r,
                Err(r) => r.min(v.packets.len() - 1),
            },
        })
    }

    fn move_selection(&mut self, delta: isize) {
        let Some(cur) = self.selected_row() else {
            return;
        };
        let last = self.view().packets.len() as isize - 1;
        let row = (cur as isize + delta).clamp(0, last) as usize;
        self.selection = if row == 0 {
            Selection::Newest
        } else {
            match self.view().row(row) {
                Some(p) => Selection::Journey(p.journey.id),
                None => Selection::Newest,
            }
        };
    }

    fn toggle_pause(&mut self) {
        if self.frozen.take().is_none() {
            self.frozen = Some(Box::new(self.live.clone()));
            self.pushed_at_pause = self.pushed;
        }
    }

    /// Applies one key. Keys: `q`/Ctrl-C quit, `p` pause/resume, arrows/PgUp/PgDn/Home/End
    /// select (or scroll the journey view), Enter inspect, Esc back, `/` filter, `?` help.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'))
        {
            return Action::Quit;
        }
        if let Some(input) = &mut self.input {
            match key.code {
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    input.text.pop();
                    input.error = None;
                }
                KeyCode::Char(c) => {
                    input.text.push(c);
                    input.error = None;
                }
                KeyCode::Enter => match PacketFilter::parse(&input.text) {
                    Ok(f) => {
                        self.input = None;
                        self.meta.filter = f.label();
                        return Action::SetFilter(f);
                    }
                    Err(e) => input.error = Some(e),
                },
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            if key.code == KeyCode::Char('q') {
                return Action::Quit;
            }
            self.help = false;
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.toggle_pause(),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('/') => self.input = Some(FilterInput::default()),
            _ => {
                if let Mode::Journey { scroll, copy, .. } = &mut self.mode {
                    // About the journey view's line count: hops, rewrites, stack, headings.
                    let max = (copy.journey.hops.len() + 16) as u16;
                    match key.code {
                        KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Enter => {
                            self.mode = Mode::Main
                        }
                        KeyCode::Up => *scroll = scroll.saturating_sub(1),
                        KeyCode::Down => *scroll = scroll.saturating_add(1).min(max),
                        KeyCode::PageUp => *scroll = scroll.saturating_sub(PAGE as u16),
                        KeyCode::PageDown => *scroll = scroll.saturating_add(PAGE as u16).min(max),
                        KeyCode::Home => *scroll = 0,
                        _ => {}
                    }
                    return Action::None;
                }
                match key.code {
                    KeyCode::Up => self.move_selection(-1),
                    KeyCode::Down => self.move_selection(1),
                    KeyCode::PageUp => self.move_selection(-PAGE),
                    KeyCode::PageDown => self.move_selection(PAGE),
                    KeyCode::Home => self.selection = Selection::Newest,
                    KeyCode::End => self.move_selection(isize::MAX / 2),
                    KeyCode::Enter | KeyCode::Right => {
                        if let Some(p) = self.selected_row().and_then(|r| self.view().row(r)) {
                            self.mode = Mode::Journey {
                                id: p.journey.id,
                                copy: Box::new(p.clone()),
                                scroll: 0,
                            };
                        }
                    }
                    _ => {}
                }
            }
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(point: Point, dir: Direction, kind: DevKind, dev: &str, ts: u64) -> TraceEvent {
        TraceEvent {
            ts_ns: ts,
            ..TraceEvent::for_test(point, dir, kind, dev)
        }
    }

    /// A request seen entering the tap `vnet0`.
    fn tap_request(ts: u64) -> TraceEvent {
        ev(
            Point::TapIngress,
            Direction::Request,
            DevKind::Tap,
            "vnet0",
            ts,
        )
    }

    #[test]
    fn a_packet_counts_once_per_hop_however_many_events_it_has_there() {
        let mut app = App::new(TuiMeta::default());
        let req = Direction::Request;
        app.push(0, &ev(Point::NetifReceive, req, DevKind::Tap, "vnet0", 1));
        app.push(0, &ev(Point::TapIngress, req, DevKind::Tap, "vnet0", 2));
        app.push(0, &ev(Point::DevXmit, req, DevKind::Other, "up0", 3));
        app.push(1, &ev(Point::TapIngress, req, DevKind::Tap, "vnet0", 4));
        assert_eq!(app.hop_count(req, Node::Tap), 2);
        assert_eq!(app.hop_count(req, Node::Uplink), 1);
        assert_eq!(app.hop_count(Direction::Reply, Node::Tap), 0);
        assert_eq!(app.view().uplink.as_deref(), Some("up0"));
    }

    #[test]
    fn a_drop_of_a_packet_gone_from_the_list_is_still_counted() {
        let mut app = App::new(TuiMeta::default());
        for j in 0..PACKET_CAP + 5 {
            app.push(j, &tap_request(j as u64));
        }
        let mut drop = ev(
            Point::Drop,
            Direction::Request,
            DevKind::Bridge,
            "br0",
            9999,
        );
        drop.reason = Some("NETFILTER_DROP".into());
        drop.stack = vec![
            "kfree_skb".into(),
            "nf_hook_slow+0x8c".into(),
            "ip_forward+0x1".into(),
        ];
        app.push(0, &drop);
        assert_eq!(app.retained_packets(), PACKET_CAP);
        assert_eq!(app.view().late, 1);
        let d = &app.drop_points()[0];
        assert_eq!((d.hook, d.count), (Some(NfHook::Forward), 1));
    }

    #[test]
    fn selection_stays_on_its_packet_as_new_ones_arrive() {
        let mut app = App::new(TuiMeta::default());
        for j in 0..3 {
            app.push(j, &tap_request(1));
        }
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.selected_row(), Some(1));
        app.push(3, &tap_request(1));
        assert_eq!(app.selected_row(), Some(2), "still journey 1");
        app.on_key(key(KeyCode::Home));
        assert_eq!(app.selected_row(), Some(0));
        app.on_key(key(KeyCode::End));
        assert_eq!(app.selected_row(), Some(3));
    }
}
