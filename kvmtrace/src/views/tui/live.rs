//! The terminal side of the UI: the only code here that does I/O.
//!
//! `Live::start` puts the terminal in raw mode on the alternate screen and starts a thread that
//! reads key presses into a channel, so the follow loop never blocks on the keyboard; the loop
//! calls [`Live::tick`] on its own timer to apply the keys and redraw. The terminal is given back
//! by [`Live::finish`], by `Drop`, and by a panic hook (installed once, chained in front of the
//! previous hook, so the panic message lands on a normal screen).

use super::app::App;
use super::meta::Action;
use super::render::draw;
use anyhow::{Context as _, Result};
use crossterm::event::{self, Event, KeyEvent};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::io::{self, Stdout, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// True while the terminal is ours (raw mode, alternate screen): whoever clears it restores.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Redraws at most this often, however often `tick` is called (keys always redraw).
const MIN_FRAME: Duration = Duration::from_millis(50);
/// How long the key thread waits for input before looking at its stop flag.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Leaves raw mode and the alternate screen, once, whoever asks first.
fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let mut out = io::stdout();
        let _ = crossterm::execute!(out, LeaveAlternateScreen, crossterm::cursor::Show);
        let _ = out.flush();
    }
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// The UI on the real terminal (stdout).
pub struct Live {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    keys: Receiver<KeyEvent>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    last_draw: Option<Instant>,
    /// A resize or a key arrived since the last frame.
    dirty: Arc<AtomicBool>,
}

impl Live {
    /// Takes over the terminal. Fails (and leaves the terminal as it was) when stdout is not a
    /// terminal or it cannot be put in raw mode.
    pub fn start() -> Result<Live> {
        install_panic_hook();
        enable_raw_mode().context("putting the terminal in raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        let started = (|| -> Result<Terminal<CrosstermBackend<Stdout>>> {
            let mut out = io::stdout();
            crossterm::execute!(out, EnterAlternateScreen, crossterm::cursor::Hide)
                .context("switching to the alternate screen")?;
            let mut t = Terminal::new(CrosstermBackend::new(io::stdout()))
                .context("setting up the terminal")?;
            t.clear().context("clearing the terminal")?;
            Ok(t)
        })();
        let terminal = match started {
            Ok(t) => t,
            Err(e) => {
                restore_terminal();
                return Err(e);
            }
        };
        let (tx, keys) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let dirty = Arc::new(AtomicBool::new(true));
        let (stop2, dirty2) = (stop.clone(), dirty.clone());
        let reader = std::thread::Builder::new()
            .name("kvmtrace-keys".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match event::poll(KEY_POLL) {
                        Ok(false) => continue,
                        Ok(true) => {}
                        Err(e) => {
                            log::warn!("reading the terminal: {e}");
                            return;
                        }
                    }
                    match event::read() {
                        Ok(Event::Key(k)) => {
                            if tx.send(k).is_err() {
                                return;
                            }
                        }
                        Ok(Event::Resize(..)) => dirty2.store(true, Ordering::Relaxed),
                        Ok(_) => {}
                        Err(e) => {
                            log::warn!("reading the terminal: {e}");
                            return;
                        }
                    }
                }
            })
            .context("starting the key reader")?;
        Ok(Live {
            terminal,
            keys,
            stop,
            reader: Some(reader),
            last_draw: None,
            dirty,
        })
    }

    /// Applies the keys pressed since the last call and redraws (at most every 50 ms unless a
    /// key or a resize came in). Returns the first action the caller must carry out
    /// (`Quit`, `SetFilter`); keys after it wait for the next call.
    pub fn tick(&mut self, app: &mut App) -> Result<Option<Action>> {
        let mut action = None;
        let mut keyed = false;
        loop {
            match self.keys.try_recv() {
                Ok(k) => {
                    keyed = true;
                    match app.on_key(k) {
                        Action::None => {}
                        a => {
                            action = Some(a);
                            break;
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The key reader is gone (terminal closed): nobody can quit by key now.
                    break;
                }
            }
        }
        let due = self.last_draw.is_none_or(|t| t.elapsed() >= MIN_FRAME);
        if keyed || due || self.dirty.swap(false, Ordering::Relaxed) {
            self.terminal
                .draw(|f| draw(f, app))
                .context("drawing the terminal UI")?;
            self.last_draw = Some(Instant::now());
        }
        Ok(action)
    }

    /// Gives the terminal back (also done on drop and on panic).
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        restore_terminal();
        if let Some(r) = self.reader.take() {
            // It looks at the stop flag at least every KEY_POLL.
            let _ = r.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shutdown();
    }
}
