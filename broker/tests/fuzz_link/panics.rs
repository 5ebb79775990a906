//! Every panic in the process, recorded with the task it happened in, so each
//! is attributed to the input whose connection task it was. Panics outside any
//! task (the test itself, the router's thread) are also printed as usual.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

/// One panic, as the hook saw it.
#[derive(Debug, Clone)]
pub struct PanicRecord {
    pub task: Option<tokio::task::Id>,
    pub thread: String,
    pub message: String,
    /// `file:line:column`.
    pub location: String,
    /// The frames of Tributary and rumqttd, the first time this location panics.
    pub backtrace: Option<String>,
    /// Inputs in flight when it happened.
    pub in_flight: Vec<u64>,
}

static RECORDS: Mutex<Vec<PanicRecord>> = Mutex::new(Vec::new());
static IN_FLIGHT: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
/// Set when the router's thread panicked: that server routes no more.
static ROUTER_DIED: AtomicBool = AtomicBool::new(false);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the recording hook (once per process).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let task = tokio::task::try_id();
            if task.is_none() {
                previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(not a string)".into());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let first_time = lock(&SEEN)
                .get_or_insert_with(HashSet::new)
                .insert(location.clone());
            let backtrace = first_time.then(|| {
                let full = std::backtrace::Backtrace::force_capture().to_string();
                ours(&full)
            });
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            if thread.starts_with("router") {
                ROUTER_DIED.store(true, Ordering::SeqCst);
            }
            let record = PanicRecord {
                task,
                thread,
                message,
                location,
                backtrace,
                in_flight: lock(&IN_FLIGHT).iter().copied().collect(),
            };
            lock(&RECORDS).push(record);
        }));
    });
}

/// The frames of a backtrace that are Tributary's or rumqttd's, with their
/// source lines.
fn ours(backtrace: &str) -> String {
    let mut out = Vec::new();
    let mut keep_next = false;
    for line in backtrace.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("at ") {
            if keep_next {
                out.push(format!("      {trimmed}"));
            }
            continue;
        }
        keep_next = (trimmed.contains("tributary") || trimmed.contains("rumqttd"))
            && !trimmed.contains("fuzz_link::panics");
        if keep_next {
            out.push(format!("  {trimmed}"));
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.join("\n")
}

/// Takes the records of panics in `task`.
pub fn take_for(task: tokio::task::Id) -> Vec<PanicRecord> {
    let mut records = lock(&RECORDS);
    let (mine, others) = records.drain(..).partition(|r| r.task == Some(task));
    *records = others;
    mine
}

/// Takes every record left.
pub fn take_all() -> Vec<PanicRecord> {
    std::mem::take(&mut *lock(&RECORDS))
}

/// Whether the router's thread died since the last call.
pub fn take_router_died() -> bool {
    ROUTER_DIED.swap(false, Ordering::SeqCst)
}

/// Marks input `index` as running (for panics no task claims).
pub fn started(index: u64) {
    lock(&IN_FLIGHT).insert(index);
}

pub fn finished(index: u64) {
    lock(&IN_FLIGHT).remove(&index);
}
