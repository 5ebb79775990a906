//! One client's subscriptions and their MQTT 5 options, as the gateway saw them.
//!
//! The router keeps the subscriptions that route messages; this table keeps what
//! the router ignores (No Local, Retain As Published, Retain Handling) so each
//! delivery can be decided, and answers UNSUBSCRIBE truthfully. It is kept with
//! the session when the session outlives the connection.

use std::collections::HashMap;

use rumqttd::protocol::{Filter, QoS, RetainForwardRule};

/// Options of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// A shared subscription (`$share/group/filter`) receives only its share.
    pub shared: bool,
    /// MQTT 5 Subscription Identifier [MQTT-3.8.2.1.2].
    pub id: Option<usize>,
}

/// MQTT 5 Retain Handling [MQTT-3.8.3.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// Send retained messages at every subscribe (0).
    OnSubscribe,
    /// Send retained messages only if the subscription is new (1).
    OnNewSubscription,
    /// Never send retained messages at subscribe (2).
    Never,
}

/// The client's subscriptions, by filter as subscribed (`$share/…` included).
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    by_filter: HashMap<String, Options>,
}

/// The filter part of a shared subscription path, and whether it was shared.
pub fn split_shared(path: &str) -> (&str, bool) {
    match path
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_, filter)) => (filter, true),
        None => (path, false),
    }
}

impl Subscriptions {
    /// Records a subscription (with the SUBSCRIBE's Subscription Identifier);
    /// returns true when it did not exist before.
    pub fn subscribe(&mut self, filter: &Filter, id: Option<usize>) -> bool {
        let (_, shared) = split_shared(&filter.path);
        let options = Options {
            qos: filter.qos as u8,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            retain_handling: match filter.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => RetainHandling::OnSubscribe,
                RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscription,
                RetainForwardRule::Never => RetainHandling::Never,
            },
            shared,
            id,
        };
        self.by_filter
            .insert(filter.path.clone(), options)
            .is_none()
    }

    /// The options of the subscription `path` (as subscribed).
    pub fn get(&self, path: &str) -> Option<&Options> {
        self.by_filter.get(path)
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, path: &str) -> bool {
        self.by_filter.remove(path).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.by_filter.is_empty()
    }

    /// Whether any subscription is not a shared one.
    pub fn has_plain(&self) -> bool {
        self.by_filter.values().any(|o| !o.shared)
    }

    /// Every subscription, as the router is given it.
    pub fn filters(&self) -> Vec<Filter> {
        self.to_filters(|_| true)
    }

    /// The shared subscriptions, as the router is given them.
    pub fn shared_filters(&self) -> Vec<Filter> {
        self.to_filters(|o| o.shared)
    }

    fn to_filters(&self, keep: impl Fn(&Options) -> bool) -> Vec<Filter> {
        self.by_filter
            .iter()
            .filter(|(_, options)| keep(options))
            .map(|(path, o)| Filter {
                path: path.clone(),
                qos: match o.qos {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                },
                nolocal: o.no_local,
                preserve_retain: o.retain_as_published,
                retain_forward_rule: match o.retain_handling {
                    RetainHandling::OnSubscribe => RetainForwardRule::OnEverySubscribe,
                    RetainHandling::OnNewSubscription => RetainForwardRule::OnNewSubscribe,
                    RetainHandling::Never => RetainForwardRule::Never,
                },
            })
            .collect()
    }

    /// Every subscription matching `topic`: its path as subscribed, and its
    /// options.
    pub fn matching<'a>(
        &'a self,
        topic: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Options)> + 'a {
        self.by_filter.iter().filter_map(move |(path, options)| {
            let (filter, _) = split_shared(path);
            tributary_wire::topic_matches(topic, filter).then_some((path.as_str(), options))
        })
    }

    /// Every subscription's path as subscribed (`$share/…` included).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.by_filter.keys().map(String::as_str)
    }

    /// The paths of the shared subscriptions.
    pub fn shared_paths(&self) -> impl Iterator<Item = &str> {
        self.by_filter
            .iter()
            .filter(|(_, o)| o.shared)
            .map(|(path, _)| path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(path: &str, nolocal: bool) -> Filter {
        Filter {
            path: path.into(),
            qos: QoS::AtLeastOnce,
            nolocal,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }
    }

    #[test]
    fn matching_finds_every_overlapping_subscription() {
        let mut subs = Subscriptions::default();
        assert!(subs.subscribe(&filter("a/#", true), None));
        assert!(subs.subscribe(&filter("a/+", false), None));
        assert!(subs.subscribe(&filter("$share/g/a/b", false), None));
        assert!(!subs.subscribe(&filter("a/+", true), None), "re-subscribe");
        assert_eq!(subs.matching("a/b").count(), 3);
        assert_eq!(subs.matching("a/b/c").count(), 1);
        assert!(subs.matching("a/b").any(|(_, o)| o.shared));
        assert!(subs.unsubscribe("a/+"));
        assert!(!subs.unsubscribe("a/+"));
        assert_eq!(subs.matching("a/b").count(), 2);
    }

    #[test]
    fn system_topics_need_a_literal_first_level() {
        let mut subs = Subscriptions::default();
        subs.subscribe(&filter("#", false), None);
        subs.subscribe(&filter("$SYS/+", false), None);
        assert_eq!(subs.matching("$SYS/x").count(), 1);
        assert_eq!(subs.matching("$SYS/x/y").count(), 0);
    }
}
