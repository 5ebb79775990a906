//! Direct delivery into sessions, for what Kafka sources publish: which
//! session subscribes to what, and a bounded mailbox per session.
//!
//! A message from Kafka does not go through the router. The source finds
//! every session with a matching subscription here and puts the message into
//! each one's mailbox, waiting while a mailbox is full; the session (its
//! connection, or the store's task while its device is away) takes letters
//! out only while its outbox has room. So a message is either in a session
//! (queued for its device, as MQTT decides in `Session::accept`) or still
//! with the source: a source stores a record's offset only after every
//! matching session took it, and a slow or absent subscriber slows the
//! source instead of losing messages.
//!
//! A session's entry lives as long as its [`Mailbox`], which the session
//! owns and carries between its connection and the store: dropping the
//! session (discarded, expired, or its last subscription gone) removes it.
//!
//! Without Kafka sources the directory keeps nothing: no session pays for
//! it. With them, a subscribed session's mailbox costs a few hundred bytes
//! while empty (letters are boxed: the channel's first block holds pointers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rumqttd::protocol::{Publish, PublishProperties};
use tokio::sync::mpsc;

use super::registry::shrink;
use super::subscriptions::{split_shared, Subscriptions};

/// Letters a mailbox holds before the source waits: a few chunks' worth of
/// commands, small next to an outbox.
const MAILBOX_CAPACITY: usize = 64;

/// One message for one session, with its [`super::origin::Origin`] attached.
#[derive(Debug, Clone)]
pub struct Letter {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
}

/// What a mailbox carries.
pub type Post = mpsc::Sender<Box<Letter>>;

/// Where a message goes: every session subscribed to it, and one member of
/// each shared subscription matching it.
#[derive(Default)]
pub struct Recipients {
    pub sessions: Vec<Post>,
    /// Per shared subscription (`$share/{group}/{filter}`), its members.
    pub groups: Vec<Vec<Post>>,
}

struct Entry {
    generation: u64,
    /// Its subscriptions as subscribed (`$share/…` included).
    filters: Vec<String>,
    tx: Post,
}

#[derive(Default)]
struct Inner {
    next_generation: u64,
    sessions: HashMap<Arc<str>, Entry>,
}

/// Every session with subscriptions, shared by the links and the sources.
pub struct Directory {
    /// False when no Kafka source runs: then nothing is kept.
    enabled: bool,
    inner: Mutex<Inner>,
}

/// A session's receiving end; its entry in the [`Directory`] goes with it.
pub struct Mailbox {
    rx: mpsc::Receiver<Box<Letter>>,
    client_id: Arc<str>,
    generation: u64,
    directory: Arc<Directory>,
}

impl Mailbox {
    /// The next letter; `None` once a newer session of the same client id
    /// took the entry over (nothing more comes here).
    pub async fn recv(&mut self) -> Option<Letter> {
        self.rx.recv().await.map(|letter| *letter)
    }
}

/// The next letter; pending without a mailbox, or once a newer session of
/// the client id took its place (nothing more comes to this one).
pub async fn next_letter(mailbox: Option<&mut Mailbox>) -> Letter {
    if let Some(mailbox) = mailbox {
        if let Some(letter) = mailbox.recv().await {
            return letter;
        }
    }
    std::future::pending().await
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let mut inner = self.directory.lock();
        if inner
            .sessions
            .get(&self.client_id)
            .is_some_and(|entry| entry.generation == self.generation)
        {
            inner.sessions.remove(&self.client_id);
            shrink(&mut inner.sessions);
        }
    }
}

impl Directory {
    /// A directory that keeps sessions only when `enabled` (Kafka sources
    /// are configured).
    pub fn new(enabled: bool) -> Directory {
        Directory {
            enabled,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what the session of `client_id` subscribes to now: gives it a
    /// mailbox at its first subscription, updates its entry after, and takes
    /// the mailbox away with its last one.
    pub fn update(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        subscriptions: &Subscriptions,
        mailbox: &mut Option<Mailbox>,
    ) {
        if !self.enabled || subscriptions.is_empty() {
            *mailbox = None;
            return;
        }
        let filters = subscriptions.paths().map(str::to_owned).collect();
        let mut inner = self.lock();
        if let Some(own) = mailbox.as_ref() {
            if let Some(entry) = inner.sessions.get_mut(client_id) {
                if entry.generation == own.generation {
                    entry.filters = filters;
                    return;
                }
            }
        }
        // New, or a newer session of this client id took the entry over
        // since: this session's subscriptions are the ones that count now.
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        inner.sessions.insert(
            client_id.clone(),
            Entry {
                generation,
                filters,
                tx,
            },
        );
        drop(inner);
        *mailbox = Some(Mailbox {
            rx,
            client_id: client_id.clone(),
            generation,
            directory: self.clone(),
        });
    }

    /// Who a message on `topic` goes to. A session with plain subscriptions
    /// matching gets it once (however many match); a shared subscription
    /// gets it once for the whole group, through one of its members that has
    /// no plain subscription matching.
    pub fn recipients(&self, topic: &str) -> Recipients {
        let inner = self.lock();
        let mut recipients = Recipients::default();
        let mut groups: HashMap<&str, Vec<Post>> = HashMap::new();
        for entry in inner.sessions.values() {
            let mut plain = false;
            let mut shared = Vec::new();
            for path in &entry.filters {
                let (filter, is_shared) = split_shared(path);
                if tributary_wire::topic_matches(topic, filter) {
                    if is_shared {
                        shared.push(path.as_str());
                    } else {
                        plain = true;
                    }
                }
            }
            if plain {
                recipients.sessions.push(entry.tx.clone());
            } else {
                for path in shared {
                    groups.entry(path).or_default().push(entry.tx.clone());
                }
            }
        }
        recipients.groups = groups.into_values().collect();
        recipients
    }

    /// Sessions with subscriptions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rumqttd::protocol::{Filter, QoS, RetainForwardRule};

    use super::*;

    fn subscriptions(paths: &[&str]) -> Subscriptions {
        let mut subscriptions = Subscriptions::default();
        for path in paths {
            subscriptions.subscribe(
                &Filter {
                    path: (*path).into(),
                    qos: QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                },
                None,
            );
        }
        subscriptions
    }

    fn letter() -> Letter {
        Letter {
            publish: Publish::new(Bytes::from_static(b"t"), Bytes::new(), false),
            properties: None,
        }
    }

    #[test]
    fn each_session_once_each_group_once() {
        let directory = Arc::new(Directory::new(true));
        let mut mailboxes: Vec<Option<Mailbox>> = (0..4).map(|_| None).collect();
        let sets: [&[&str]; 4] = [
            &["devices/+/commands", "devices/#"],
            &["$share/g/devices/#"],
            &["$share/g/devices/#", "devices/7/commands"],
            &["other/#"],
        ];
        for (i, set) in sets.iter().enumerate() {
            directory.update(
                &Arc::from(format!("c{i}")),
                &subscriptions(set),
                &mut mailboxes[i],
            );
        }
        let to = directory.recipients("devices/7/commands");
        assert_eq!(to.sessions.len(), 2, "c0 once, c2 through its plain one");
        assert_eq!(to.groups.len(), 1);
        assert_eq!(to.groups[0].len(), 1, "c1 only: c2 has it already");
        assert_eq!(directory.recipients("$SYS/x").sessions.len(), 0);
        assert_eq!(directory.len(), 4);
    }

    #[tokio::test]
    async fn the_entry_goes_with_the_mailbox_and_a_newer_session_keeps_its_own() {
        let directory = Arc::new(Directory::new(true));
        let client: Arc<str> = Arc::from("c");
        let mut older = None;
        directory.update(&client, &subscriptions(&["a"]), &mut older);
        let mut newer = None;
        directory.update(&client, &subscriptions(&["a", "b"]), &mut newer);
        // The older session's mailbox hears nothing more, and dropping it
        // leaves the newer session's entry alone.
        let mut older = older.unwrap();
        assert!(older.recv().await.is_none());
        drop(older);
        let to = directory.recipients("b");
        assert_eq!(to.sessions.len(), 1);
        to.sessions[0].send(Box::new(letter())).await.unwrap();
        assert!(newer.as_mut().unwrap().recv().await.is_some());
        // Its last subscription gone, the session has no mailbox and no entry.
        directory.update(&client, &Subscriptions::default(), &mut newer);
        assert!(newer.is_none());
        assert_eq!(directory.len(), 0);
    }

    #[test]
    fn without_sources_nothing_is_kept() {
        let directory = Arc::new(Directory::new(false));
        let mut mailbox = None;
        directory.update(&Arc::from("c"), &subscriptions(&["a"]), &mut mailbox);
        assert!(mailbox.is_none());
        assert_eq!(directory.len(), 0);
    }
}
