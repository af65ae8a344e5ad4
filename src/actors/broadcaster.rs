//! The broadcaster: fans decision events, config changes and statistics out to the live
//! feeds (WebSocket sessions and SSE streams) by topic, the global one or one client's.
//!
//! Messages:
//! - [`Subscribe`] → [`Subscription`]: a bounded receiver of [`FeedMessage`]s.
//! - [`Unsubscribe`]: a subscriber went away (closed receivers are also swept each second).
//! - [`DecisionEvent`]: from the client limiters, only while someone watches
//!   ([`FeedInterest`]).
//! - [`ConfigChanged`]: from the config writer.
//! - [`ClientReset`]: from the admin API; goes to the client's feed and the global one.
//! - [`EndFeeds`] → how many were open: the server is stopping; every subscription ends
//!   now (WebSocket sessions close with 1001, SSE streams end) and none starts again.
//!
//! It never blocks a decision: every subscriber has a buffer of [`SUBSCRIBER_BUFFER`]
//! messages; when it is full, messages for that subscriber are dropped and counted, and it
//! receives one `events_dropped` with the count as soon as there is room again. Under heavy
//! traffic each topic forwards at most `max_events_per_sec` decision events a second (a
//! sample); `global_stats`, sent every second, always carries the exact totals.

use super::DecisionEvent;
use crate::clock::{SharedClock, ceil_secs, rfc3339};
use crate::config::{Config, ConfigAction};
use crate::report::Reporter;
use actix::prelude::*;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Messages a subscriber may hold before the next ones are dropped.
pub const SUBSCRIBER_BUFFER: usize = 256;
/// How often `global_stats` goes out.
const GLOBAL_STATS_EVERY: Duration = Duration::from_secs(1);
/// How often changed clients get a fresh `client_stats` (coalesced).
const CLIENT_STATS_EVERY: Duration = Duration::from_millis(250);

/// Which events a subscriber wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Global,
    Client(Arc<str>),
}

/// One feed message: its type (the SSE event name) and its JSON, serialised once for all
/// subscribers.
#[derive(Debug, Clone)]
pub struct FeedMessage {
    pub kind: &'static str,
    pub json: Arc<str>,
}

impl FeedMessage {
    fn new(kind: &'static str, clock: &SharedClock, mut body: Value) -> Self {
        body["type"] = json!(kind);
        body["timestamp"] = json!(rfc3339(clock.now()));
        Self {
            kind,
            json: Arc::from(body.to_string()),
        }
    }
}

/// Subscribe to a topic.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub topic: Topic,
}

/// A subscription: read messages from `receiver`; dropping it unsubscribes.
pub struct Subscription {
    pub id: u64,
    pub receiver: mpsc::Receiver<FeedMessage>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// A config was created, updated or deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConfigChanged {
    pub action: ConfigAction,
    pub config: Config,
}

/// An operator gave a client its whole quota back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientReset {
    pub client: Arc<str>,
    /// The config endpoints reset.
    pub endpoints: Vec<String>,
}

/// End every subscription and refuse new ones: the server is stopping.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct EndFeeds;

/// Hand over the decision events kept for the other instances since the last call.
#[derive(Message)]
#[rtype(result = "Vec<DecisionEvent>")]
pub struct TakeOutbox;

/// Who is watching, readable without a message: limiters only send decision events that
/// someone will receive, so the feeds cost nothing while nobody watches.
#[derive(Debug, Default)]
pub struct FeedInterest {
    global: AtomicUsize,
    client_total: AtomicUsize,
    clients: RwLock<HashMap<Arc<str>, usize>>,
    /// Distributed mode: another instance has subscribers, so every event is wanted.
    remote: AtomicBool,
}

impl FeedInterest {
    pub fn wants(&self, client: &str) -> bool {
        self.global.load(Ordering::Relaxed) > 0
            || self.remote.load(Ordering::Relaxed)
            || (self.client_total.load(Ordering::Relaxed) > 0
                && self
                    .clients
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(client))
    }

    /// Whether this instance has any feed subscriber.
    pub fn watched_here(&self) -> bool {
        self.global.load(Ordering::Relaxed) > 0 || self.client_total.load(Ordering::Relaxed) > 0
    }

    /// Distributed mode: whether some other instance has feed subscribers.
    pub fn set_remote(&self, watched: bool) {
        self.remote.store(watched, Ordering::Relaxed);
    }

    fn add(&self, topic: &Topic, delta: isize) {
        match topic {
            Topic::Global => add(&self.global, delta),
            Topic::Client(c) => {
                add(&self.client_total, delta);
                let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
                let n = clients.entry(c.clone()).or_default();
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    clients.remove(c);
                }
            }
        }
    }
}

fn add(counter: &AtomicUsize, delta: isize) {
    if delta >= 0 {
        counter.fetch_add(delta as usize, Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

struct Subscriber {
    topic: Topic,
    tx: mpsc::Sender<FeedMessage>,
    /// Messages dropped since the last `events_dropped` this subscriber received.
    dropped: u64,
    /// A new client subscriber's messages, held until its first `client_stats` is out,
    /// so that it is always the first message.
    held: Option<Vec<FeedMessage>>,
}

/// Decision events forwarded to one topic in the current second.
#[derive(Default)]
struct Budget {
    second: u64,
    used: u32,
}

pub struct Broadcaster {
    clock: SharedClock,
    reporter: Reporter,
    interest: Arc<FeedInterest>,
    max_events_per_sec: u32,
    subscribers: HashMap<u64, Subscriber>,
    by_topic: HashMap<Topic, Vec<u64>>,
    budgets: HashMap<Topic, Budget>,
    /// Watched clients that changed since their last `client_stats`.
    stale: HashSet<Arc<str>>,
    next_id: u64,
    /// Messages dropped over all subscribers (`ratewarden_feed_events_dropped_total`).
    dropped_total: Counter,
    /// Distributed mode: this instance's name, and its events kept for the others.
    cluster: Option<Outbox>,
    /// Set by [`EndFeeds`]: new subscriptions end as soon as they start.
    ended: bool,
}

/// This instance's decision events for the other instances, at most `max` a second.
struct Outbox {
    instance: Arc<str>,
    events: Vec<DecisionEvent>,
    max: usize,
}

impl Broadcaster {
    pub fn new(
        reporter: Reporter,
        interest: Arc<FeedInterest>,
        max_events_per_sec: u32,
        dropped_total: Counter,
    ) -> Self {
        Self {
            clock: reporter.clock.clone(),
            reporter,
            interest,
            max_events_per_sec,
            subscribers: HashMap::new(),
            by_topic: HashMap::new(),
            budgets: HashMap::new(),
            stale: HashSet::new(),
            next_id: 0,
            dropped_total,
            cluster: None,
            ended: false,
        }
    }

    /// Distributed mode: label events with `instance` and keep up to `max` a second of
    /// this instance's for [`TakeOutbox`].
    pub fn in_cluster(mut self, instance: Arc<str>, max: usize) -> Self {
        self.cluster = Some(Outbox {
            instance,
            events: Vec::new(),
            max,
        });
        self
    }

    fn publish(&mut self, topic: &Topic, msg: &FeedMessage) {
        let Some(ids) = self.by_topic.get(topic) else {
            return;
        };
        let mut closed = Vec::new();
        for id in ids {
            if let Some(sub) = self.subscribers.get_mut(id)
                && !deliver(sub, msg, &self.clock, &self.dropped_total)
            {
                closed.push(*id);
            }
        }
        for id in closed {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(sub) = self.subscribers.remove(&id) {
            self.interest.add(&sub.topic, -1);
            if let Some(ids) = self.by_topic.get_mut(&sub.topic) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_topic.remove(&sub.topic);
                    self.budgets.remove(&sub.topic);
                }
            }
        }
    }

    /// Whether `topic` may forward one more decision event this second.
    fn within_budget(&mut self, topic: &Topic, second: u64) -> bool {
        if !self.by_topic.contains_key(topic) {
            return false;
        }
        let budget = self.budgets.entry(topic.clone()).or_default();
        if budget.second != second {
            *budget = Budget { second, used: 0 };
        }
        budget.used += 1;
        budget.used <= self.max_events_per_sec
    }

    /// Fetches a client's statistics and publishes them to its topic, or, for `first`, to
    /// that new subscriber first of all, releasing what it was holding.
    fn send_client_stats(&mut self, client: Arc<str>, first: Option<u64>, ctx: &mut Context<Self>) {
        let reporter = self.reporter.clone();
        let fetch = async move {
            let data = reporter.client_stats(client.clone()).await;
            (client, data)
        };
        ctx.spawn(fetch.into_actor(self).map(move |(client, data), act, _| {
            let msg = match data {
                Ok(data) => Some(FeedMessage::new(
                    "client_stats",
                    &act.clock,
                    json!({"client_id": &*client, "data": data}),
                )),
                Err(e) => {
                    log::warn!("statistics for the live feed of client {client:?} failed: {e}");
                    None
                }
            };
            let Some(id) = first else {
                if let Some(msg) = msg {
                    act.publish(&Topic::Client(client), &msg);
                }
                return;
            };
            let Some(sub) = act.subscribers.get_mut(&id) else {
                return;
            };
            let held = sub.held.take().unwrap_or_default();
            let mut open = true;
            for m in msg.iter().chain(&held) {
                open &= deliver(sub, m, &act.clock, &act.dropped_total);
            }
            if !open {
                act.remove(id);
            }
        }));
    }
}

/// Offers `msg` to one subscriber; `false` once its receiver is gone.
fn deliver(
    sub: &mut Subscriber,
    msg: &FeedMessage,
    clock: &SharedClock,
    dropped_total: &Counter,
) -> bool {
    if let Some(held) = &mut sub.held {
        if held.len() < SUBSCRIBER_BUFFER {
            held.push(msg.clone());
        } else {
            sub.dropped += 1;
            dropped_total.inc();
        }
        return true;
    }
    if sub.dropped > 0 {
        let notice = FeedMessage::new("events_dropped", clock, json!({"count": sub.dropped}));
        match sub.tx.try_send(notice) {
            Ok(()) => sub.dropped = 0,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(_)) => {}
        }
    }
    match sub.tx.try_send(msg.clone()) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            sub.dropped += 1;
            dropped_total.inc();
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Limiters use `do_send`, which never waits on the mailbox's capacity.
        ctx.run_interval(GLOBAL_STATS_EVERY, |act, _| {
            let closed: Vec<u64> = act
                .subscribers
                .iter()
                .filter(|(_, s)| s.tx.is_closed())
                .map(|(id, _)| *id)
                .collect();
            for id in closed {
                act.remove(id);
            }
            if act.by_topic.contains_key(&Topic::Global) {
                let data = act.reporter.global_stats();
                let msg = FeedMessage::new("global_stats", &act.clock, json!({"data": data}));
                act.publish(&Topic::Global, &msg);
            }
        });
        ctx.run_interval(CLIENT_STATS_EVERY, |act, ctx| {
            for client in std::mem::take(&mut act.stale) {
                act.send_client_stats(client, None, ctx);
            }
        });
    }
}

impl Handler<Subscribe> for Broadcaster {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        if self.ended {
            // `tx` is dropped here: the receiver ends at once.
            return MessageResult(Subscription {
                id: u64::MAX,
                receiver,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.interest.add(&msg.topic, 1);
        self.by_topic.entry(msg.topic.clone()).or_default().push(id);
        let mut held = None;
        if let Topic::Client(client) = &msg.topic {
            // The first message a client feed gets is that client's statistics.
            held = Some(Vec::new());
            self.send_client_stats(client.clone(), Some(id), ctx);
        }
        self.subscribers.insert(
            id,
            Subscriber {
                topic: msg.topic,
                tx,
                dropped: 0,
                held,
            },
        );
        MessageResult(Subscription { id, receiver })
    }
}

impl Handler<EndFeeds> for Broadcaster {
    type Result = usize;

    /// Dropping a subscriber's sender ends its receiver, which ends its feed.
    fn handle(&mut self, _: EndFeeds, _: &mut Context<Self>) -> usize {
        self.ended = true;
        let ids: Vec<u64> = self.subscribers.keys().copied().collect();
        for id in &ids {
            self.remove(*id);
        }
        ids.len()
    }
}

impl Handler<Unsubscribe> for Broadcaster {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.remove(msg.id);
    }
}

impl Handler<DecisionEvent> for Broadcaster {
    type Result = ();

    fn handle(&mut self, event: DecisionEvent, _: &mut Context<Self>) {
        if let Some(outbox) = &mut self.cluster
            && event.origin.is_none()
            && outbox.events.len() < outbox.max
        {
            outbox.events.push(event.clone());
        }
        let second = event.at / crate::clock::NANOS_PER_SEC;
        let client_topic = Topic::Client(event.client.clone());
        let to_client = self.within_budget(&client_topic, second);
        let to_global = self.within_budget(&Topic::Global, second);
        if self.by_topic.contains_key(&client_topic) {
            self.stale.insert(event.client.clone());
        }
        if !to_client && !to_global {
            return;
        }
        let d = &event.decision;
        let mut body =
            json!({"client_id": &*event.client, "endpoint": &*event.endpoint, "limit": d.limit});
        if let Some(name) = &event.limit {
            // A config of several limits: the binding one (on a refusal, the one that
            // refused with the longest wait).
            body["limit_name"] = json!(&**name);
            body["limits"] = json!(&event.each);
        }
        if let Some(asked) = &event.asked {
            body["path"] = json!(&*asked.path);
            body["via"] = json!(asked.via);
        }
        if let Some(outbox) = &self.cluster {
            body["instance"] = json!(&**event.origin.as_ref().unwrap_or(&outbox.instance));
        }
        if event.shadow {
            // Over the limit of a config in shadow mode: let through, and said so.
            body["shadow"] = json!(true);
            body["would_limit"] = json!(!d.allowed);
        }
        let kind = if let Some(units) = event.charged {
            // A charge of what a request used: every charged limit, with its debt.
            body["charged"] = json!(units);
            body["limits"] = json!(&event.each);
            body["remaining"] = json!(d.remaining);
            if d.debt > 0 {
                body["debt"] = json!(d.debt);
                body["retry_after"] = json!(ceil_secs(d.retry_after).max(1));
            }
            "usage_charged"
        } else if d.allowed || event.shadow {
            body["remaining"] = json!(d.remaining);
            if !d.allowed {
                body["retry_after"] = json!(ceil_secs(d.retry_after).max(1));
            }
            "request_processed"
        } else {
            body["retry_after"] = json!(ceil_secs(d.retry_after).max(1));
            "rate_limit_exceeded"
        };
        let msg = FeedMessage::new(kind, &self.clock, body);
        if to_client {
            self.publish(&client_topic, &msg);
        }
        if to_global {
            self.publish(&Topic::Global, &msg);
        }
    }
}

impl Handler<TakeOutbox> for Broadcaster {
    type Result = MessageResult<TakeOutbox>;

    fn handle(&mut self, _: TakeOutbox, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.cluster
                .as_mut()
                .map(|o| std::mem::take(&mut o.events))
                .unwrap_or_default(),
        )
    }
}

impl Handler<ClientReset> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: ClientReset, _: &mut Context<Self>) {
        let body = json!({"client_id": &*msg.client, "endpoints": msg.endpoints});
        let feed = FeedMessage::new("client_reset", &self.clock, body);
        let topic = Topic::Client(msg.client.clone());
        if self.by_topic.contains_key(&topic) {
            self.stale.insert(msg.client);
        }
        self.publish(&topic, &feed);
        self.publish(&Topic::Global, &feed);
    }
}

impl Handler<ConfigChanged> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: ConfigChanged, _: &mut Context<Self>) {
        let msg = FeedMessage::new(
            "config_updated",
            &self.clock,
            json!({"action": msg.action, "config": msg.config.view()}),
        );
        self.publish(&Topic::Global, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn subscriber(capacity: usize) -> (Subscriber, mpsc::Receiver<FeedMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sub = Subscriber {
            topic: Topic::Global,
            tx,
            dropped: 0,
            held: None,
        };
        (sub, rx)
    }

    #[test]
    fn a_full_subscriber_loses_messages_then_hears_how_many() {
        let clock: SharedClock = ManualClock::new(0);
        let (mut sub, mut rx) = subscriber(2);
        let total = Counter::default();
        let msg = |n: u32| FeedMessage::new("request_processed", &clock, json!({"n": n}));
        for n in 0..5 {
            assert!(deliver(&mut sub, &msg(n), &clock, &total));
        }
        assert_eq!((sub.dropped, total.get()), (3, 3));
        assert!(rx.try_recv().unwrap().json.contains("\"n\":0"));
        assert!(rx.try_recv().unwrap().json.contains("\"n\":1"));
        // Room for one: the drop notice goes first, then the next message is dropped.
        assert!(deliver(&mut sub, &msg(5), &clock, &total));
        let notice = rx.try_recv().unwrap();
        assert_eq!(notice.kind, "events_dropped");
        let v: Value = serde_json::from_str(&notice.json).unwrap();
        assert_eq!(v["count"], 3);
        assert_eq!(v["type"], "events_dropped");
        assert!(v["timestamp"].is_string());
        assert!(rx.try_recv().unwrap().json.contains("\"n\":5"));
        drop(rx);
        assert!(
            !deliver(&mut sub, &msg(6), &clock, &total),
            "a closed receiver is reported"
        );
    }

    #[test]
    fn interest_tracks_watchers_per_client() {
        let interest = FeedInterest::default();
        let alice = Topic::Client("alice".into());
        assert!(!interest.wants("alice"));
        interest.add(&alice, 1);
        assert!(interest.wants("alice") && !interest.wants("bob"));
        interest.add(&Topic::Global, 1);
        assert!(interest.wants("bob"));
        interest.add(&Topic::Global, -1);
        interest.add(&alice, -1);
        assert!(!interest.wants("alice"));
    }
}
