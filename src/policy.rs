//! Policies: what the hot path reads of the configs. The in-memory table resolves a
//! request path to its policy without allocating; it is swapped whole by the config
//! writer ([`crate::config::writer`]).

use crate::config::descriptor::Pattern;
use crate::config::{Change, Config, ConfigSpec, DEFAULT_ENDPOINT, Enforcement, Key, Override};
use crate::decide::QuotaField;
use crate::limiter::{Decision, Decisions, FixedWindowLimit, Limit, Named, Unit};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What the hot path needs of a config.
#[derive(Debug, PartialEq)]
pub struct Policy {
    /// The config's endpoint: the second half of the rate-limit key and the policy name
    /// in the `RateLimit-Policy` header.
    pub endpoint: Arc<str>,
    /// Its limits, in the config's order; at least one.
    pub limits: Box<[Named]>,
    pub active: bool,
    /// Shadow mode: decided and reported like any other, never refused.
    pub shadow: bool,
    /// What the limits count per.
    pub key: Key,
    /// The client pattern of the override this policy comes from, if one.
    pub tier: Option<Arc<str>>,
    /// Where a key value's limiter keeps this policy's state: its endpoint; for the
    /// limits of a group that count per another key than the config's, the endpoint
    /// and that key (`/api/* [key:global]`), so that two keys whose values coincide (a
    /// client without an id is counted by its address, as an `ip` key counts) never
    /// share a state.
    pub slot: Arc<str>,
    /// For a config whose limits count per different keys, or hold units until a
    /// request is done next to others: the limits of each key (held or not) as a
    /// policy of its own, decided in this order (see [`Policy::grouped`]); empty when
    /// every limit counts per the config's key and none is held, or all are.
    pub groups: Box<[Group]>,
    /// The keys its groups count per besides the config's, in the order they are
    /// decided: what a surface finds a value of for each request (see [`KeyValues`]).
    pub other_keys: Box<[Key]>,
    /// The policy of its limits that are not held, when it has both kinds (see
    /// [`Policy::without_held`]).
    pub unheld: Option<Arc<Policy>>,
    /// Its `RateLimit-Policy` field, once made (see [`crate::decide::structured_fields`]).
    pub quota_field: QuotaField,
    /// Whether units its checks take may be given back before their window passes:
    /// it holds them until a request is done, it takes an estimate that a report may
    /// reconcile down, or it is a part of a config whose limits count per different
    /// keys (a later part's refusal gives back what it took).
    pub refundable: bool,
    /// The kind of its limits (of the first, for a policy of groups).
    pub kind: Kind,
}

/// How a limit takes what a request costs: for good when admitted (requests), until
/// the request is done (concurrency), or as tokens or bytes, charged what the request
/// used (a request takes its estimate of them up front, 0 if none: then it is admitted
/// while a unit is left). Limits of different kinds are decided as groups of their
/// own, each taking its kind's cost (see [`crate::decide::Cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Held,
    Tokens,
    Bytes,
}

impl Kind {
    pub fn of(l: &Named) -> Self {
        match (l.limit.is_held(), l.unit) {
            (true, _) => Kind::Held,
            (false, Unit::Requests) => Kind::Requests,
            (false, Unit::Tokens) => Kind::Tokens,
            (false, Unit::Bytes) => Kind::Bytes,
        }
    }

    /// Whether its units are charged for what a request used.
    pub fn is_metered(self) -> bool {
        matches!(self, Kind::Tokens | Kind::Bytes)
    }

    /// What a slot of its kind is marked with (none for requests).
    fn mark(self) -> &'static str {
        match self {
            Kind::Requests => "",
            Kind::Held => "in-flight",
            Kind::Tokens => "tokens",
            Kind::Bytes => "bytes",
        }
    }
}

/// The limits of a config that count per one key (and are held, or not), as a policy
/// of their own (see [`Policy::groups`]).
#[derive(Debug, PartialEq)]
pub struct Group {
    pub policy: Arc<Policy>,
    /// Where its limits are among the whole policy's.
    pub positions: Box<[usize]>,
    /// The kind of its limits (held until a request is done: [`Limit::is_held`]).
    pub kind: Kind,
    /// Which of a request's key values it counts under (see [`KeyValues`]).
    pub value: usize,
}

impl Policy {
    pub fn from_spec(spec: &ConfigSpec) -> Self {
        Self::with_overrides(spec, &[], Arc::from(spec.endpoint.as_str()), None)
    }

    /// The policy of the clients `overrides` (all of one client pattern, `tier`) apply
    /// to: each changes the limit it names. `endpoint` is the spec's, shared.
    fn with_overrides(
        spec: &ConfigSpec,
        overrides: &[&Override],
        endpoint: Arc<str>,
        tier: Option<Arc<str>>,
    ) -> Self {
        let specs = spec.limit_specs();
        let limits: Box<[Named]> = specs
            .iter()
            .map(
                |l| match overrides.iter().find(|o| o.changes(&l.name, &specs)) {
                    Some(o) => o.apply_to(l).named(),
                    None => l.named(),
                },
            )
            .collect();
        let keys: Vec<Key> = specs.iter().map(|l| spec.key_of(l).clone()).collect();
        let base = Self {
            endpoint: endpoint.clone(),
            limits: Box::new([]),
            active: spec.is_active,
            shadow: spec.mode == Enforcement::Shadow,
            key: spec.key.clone(),
            tier,
            slot: endpoint,
            groups: Box::new([]),
            other_keys: Box::new([]),
            unheld: None,
            quota_field: QuotaField::default(),
            refundable: false,
            kind: Kind::Requests,
        };
        // (`base` lends its endpoint, mode, key and tier; its limits are these.)
        base.with_limits(limits, &keys)
    }

    /// This policy (its endpoint, mode, key and tier) with `limits`, each counting per
    /// its key in `keys`: grouped when they count per different keys or are of
    /// different kinds ([`Kind`]), and with the policy of its limits that are not held.
    fn with_limits(&self, limits: Box<[Named]>, keys: &[Key]) -> Policy {
        let kind = limits.first().map_or(Kind::Requests, Kind::of);
        // Held or metered limits alone keep their state where they would next to
        // others, so that a limit added or removed beside them leaves what they hold.
        let mut policy = self.part(limits, &self.key, kind);
        let parts: Vec<(&Key, Kind)> = (keys.iter())
            .zip(policy.limits.iter().map(Kind::of))
            .collect();
        if parts.iter().any(|p| *p != parts[0]) {
            policy.slot = self.endpoint.clone();
            policy.grouped(&parts);
        }
        policy
    }

    /// A policy of this one's endpoint, mode and tier with `limits` of one kind,
    /// counting per `key`, and ungrouped: its state kept under the slot of its kind.
    fn part(&self, limits: Box<[Named]>, key: &Key, kind: Kind) -> Policy {
        let slot = match (*key == self.key, kind) {
            (true, Kind::Requests) => self.endpoint.clone(),
            (true, _) => Arc::from(format!("{} [{}]", self.endpoint, kind.mark())),
            (false, Kind::Requests) => Arc::from(format!("{} [key:{key}]", self.endpoint)),
            (false, _) => Arc::from(format!("{} [key:{key} {}]", self.endpoint, kind.mark())),
        };
        Policy {
            endpoint: self.endpoint.clone(),
            limits,
            active: self.active,
            shadow: self.shadow,
            key: key.clone(),
            tier: self.tier.clone(),
            slot,
            groups: Box::new([]),
            other_keys: Box::new([]),
            unheld: None,
            quota_field: QuotaField::default(),
            refundable: kind != Kind::Requests,
            kind,
        }
    }

    /// Groups its limits by the key each counts per and their kind (`parts`, in their
    /// order): the config's key first (its limits of requests, then those held, then
    /// those of tokens, then of bytes), then the other keys in the config's order, `global` last (the
    /// budget every caller shares is only touched once a caller's own limits admit).
    /// Each group's state is kept under a slot of its own: the endpoint's name for the
    /// config's key's limits of requests. Then the policy of the limits that are not
    /// held, made of the same groups.
    fn grouped(&mut self, parts: &[(&Key, Kind)]) {
        let mut order: Vec<(&Key, Kind)> = Vec::new();
        for kind in [Kind::Requests, Kind::Held, Kind::Tokens, Kind::Bytes] {
            if parts.contains(&(&self.key, kind)) {
                order.push((&self.key, kind));
            }
        }
        let first_other = order.len();
        for p in parts {
            if !order.contains(p) {
                order.push(*p);
            }
        }
        order[first_other..].sort_by_key(|(k, _)| **k == Key::Global);
        let mut other_keys: Vec<Key> = Vec::new();
        for (k, _) in &order[first_other..] {
            if !other_keys.contains(k) {
                other_keys.push((*k).clone());
            }
        }
        let groups: Box<[Group]> = (order.iter())
            .map(|&(key, kind)| {
                let positions: Box<[usize]> = (0..parts.len())
                    .filter(|&i| parts[i] == (key, kind))
                    .collect();
                let limits = positions.iter().map(|&i| self.limits[i].clone()).collect();
                Group {
                    policy: Arc::new(Policy {
                        refundable: true,
                        ..self.part(limits, key, kind)
                    }),
                    positions,
                    kind,
                    value: match *key == self.key {
                        true => 0,
                        false => 1 + other_keys.iter().position(|k| k == key).unwrap_or(0),
                    },
                }
            })
            .collect();
        // The limits that are not held, numbered among themselves.
        let mut renumbered = vec![usize::MAX; parts.len()];
        let mut kept = Vec::new();
        for (i, (_, kind)) in parts.iter().enumerate() {
            if *kind != Kind::Held {
                renumbered[i] = kept.len();
                kept.push(self.limits[i].clone());
            }
        }
        self.other_keys = other_keys.into();
        if !kept.is_empty() && kept.len() < parts.len() {
            let unheld: Vec<Group> = (groups.iter().filter(|g| g.kind != Kind::Held))
                .map(|g| Group {
                    policy: g.policy.clone(),
                    positions: g.positions.iter().map(|&i| renumbered[i]).collect(),
                    kind: g.kind,
                    value: g.value,
                })
                .collect();
            self.unheld = Some(match unheld.as_slice() {
                // The config's key's limits alone: that group is the whole policy.
                [only] if only.value == 0 => only.policy.clone(),
                _ => Arc::new(Policy {
                    groups: unheld.into(),
                    other_keys: self.other_keys.clone(),
                    ..self.part(kept.into(), &self.key, Kind::Requests)
                }),
            });
        }
        self.groups = groups;
    }

    /// The policy to decide where nothing tells when a request is done (forward-auth,
    /// Envoy): this one without its held limits; `None` when all of them are held (then
    /// nothing is enforced there).
    pub fn without_held(self: &Arc<Self>) -> Option<&Arc<Policy>> {
        match (&self.unheld, self.limits[0].limit.is_held()) {
            (Some(unheld), _) => Some(unheld),
            (None, false) => Some(self),
            (None, true) => None,
        }
    }

    /// The parts of it a request holds until it is done: its held groups, or itself
    /// when all its limits are held; nothing when none is.
    pub fn held_parts(self: &Arc<Self>) -> impl Iterator<Item = (usize, &Arc<Policy>)> {
        let whole = (self.groups.is_empty() && self.limits.iter().all(|l| l.limit.is_held()))
            .then_some((0, self));
        let groups = self.groups.iter().enumerate();
        whole.into_iter().chain(
            groups
                .filter(|(_, g)| g.kind == Kind::Held)
                .map(|(i, g)| (i, &g.policy)),
        )
    }

    /// Its parts of tokens or bytes, each with the index of the request's key value it
    /// counts under (see [`KeyValues`]): its groups of those kinds, or itself when all
    /// its limits are of one of them; nothing when none is.
    pub fn metered_parts(self: &Arc<Self>) -> impl Iterator<Item = (usize, &Arc<Policy>)> {
        let whole = (self.groups.is_empty() && self.kind.is_metered()).then_some((0, self));
        let groups = self.groups.iter().filter(|g| g.kind.is_metered());
        whole
            .into_iter()
            .chain(groups.map(|g| (g.value, &g.policy)))
    }

    /// The policy whose state a check of the config's key value keeps: its first
    /// group's counted under that value, or this one when it has no groups; `None` when
    /// no group counts under it (the part of a config without its held limits, where
    /// only those counted under the config's key).
    pub fn own(self: &Arc<Self>) -> Option<&Arc<Policy>> {
        match self.groups.first() {
            None => Some(self),
            Some(g) => (g.value == 0).then_some(&g.policy),
        }
    }

    /// The decisions of the whole policy from each group's (`parts`, in the groups'
    /// order), in the config's order of its limits.
    pub fn merge(&self, parts: &[Decisions]) -> Decisions {
        let mut each: SmallVec<[Decision; 1]> = SmallVec::with_capacity(self.limits.len());
        each.resize(self.limits.len(), *parts[0].decision());
        for (g, d) in self.groups.iter().zip(parts) {
            for (&i, d) in g.positions.iter().zip(d.each()) {
                each[i] = *d;
            }
        }
        Decisions::of(each).decided_at(parts[0].at())
    }

    /// The policy of the group whose state is kept under `slot`.
    fn of_slot(self: &Arc<Self>, slot: &str) -> Option<&Arc<Policy>> {
        if *self.slot == *slot && self.groups.is_empty() {
            return Some(self);
        }
        self.groups
            .iter()
            .map(|g| &g.policy)
            .find(|p| *p.slot == *slot)
    }

    /// Whether it has several limits (a config of one shows as before: its policy is
    /// named by its endpoint, and bodies list no limits).
    pub fn several(&self) -> bool {
        self.limits.len() > 1
    }

    /// Limit `i` of `quota` in words, for messages: `5 requests per 60 s` (`1000 tokens
    /// per 60 s` for a limit of tokens), `... per month (UTC)` for calendar windows, `4
    /// requests in flight` for concurrency.
    pub fn limit_words(&self, i: usize, quota: u64) -> String {
        match self.limits.get(i) {
            Some(Named {
                limit:
                    Limit::FixedWindow(FixedWindowLimit {
                        calendar: Some(c), ..
                    }),
                unit,
                ..
            }) => format!("{quota} {} per {} (UTC)", unit.as_str(), c.as_str()),
            Some(l) if l.limit.is_held() => format!("{quota} requests in flight"),
            Some(l) => format!("{quota} {} per {} s", l.unit.as_str(), l.window_seconds),
            None => String::new(),
        }
    }

    /// Each limit with its decision in `d` (decided under this policy), in the config's
    /// order.
    pub fn each<'a>(&'a self, d: &'a Decisions) -> impl Iterator<Item = (&'a Named, &'a Decision)> {
        self.limits.iter().zip(d.each())
    }

    /// The limits that refused in `d`, in the config's order.
    pub fn violated<'a>(&'a self, d: &'a Decisions) -> impl Iterator<Item = &'a Named> {
        self.each(d).filter(|(_, d)| !d.allowed).map(|(l, _)| l)
    }

    /// Whether a request so decided is refused: over a limit, and not in shadow mode.
    pub fn refuses(&self, d: &Decision) -> bool {
        !d.allowed && !self.shadow
    }
}

/// One config's policies: its own, and its overrides' by client.
#[derive(Debug)]
pub struct Rule {
    base: Arc<Policy>,
    exact: HashMap<String, Arc<Policy>>,
    /// Prefix overrides by prefix length, longest first: a client is looked up once per
    /// distinct length (at most 128), whatever the number of overrides.
    prefixes: Vec<(usize, HashMap<String, Arc<Policy>>)>,
}

impl Rule {
    fn new(spec: &ConfigSpec) -> Self {
        let base = Arc::new(Policy::from_spec(spec));
        let mut exact = HashMap::new();
        let mut by_length: std::collections::BTreeMap<usize, HashMap<String, Arc<Policy>>> =
            Default::default();
        // The overrides of each client pattern, in the config's order (one per limit).
        let mut patterns: Vec<(&str, Vec<&Override>)> = Vec::new();
        for o in &spec.overrides {
            match patterns.iter_mut().find(|(p, _)| *p == o.client) {
                Some((_, list)) => list.push(o),
                None => patterns.push((&o.client, vec![o])),
            }
        }
        for (pattern, overrides) in patterns {
            // The same key as the config's: an override changes the numbers, not whose
            // budget it is (and reuses the name's allocation).
            let tier = Some(Arc::from(pattern));
            let policy = Policy::with_overrides(spec, &overrides, base.endpoint.clone(), tier);
            let policy = Arc::new(policy);
            match pattern.strip_suffix('*') {
                Some(prefix) => {
                    by_length
                        .entry(prefix.len())
                        .or_default()
                        .insert(prefix.to_owned(), policy);
                }
                None => {
                    exact.insert(pattern.to_owned(), policy);
                }
            }
        }
        let prefixes = by_length.into_iter().rev().collect();
        Self {
            base,
            exact,
            prefixes,
        }
    }

    /// The policy for `client`: its own override, else the longest matching prefix
    /// override, else the config's.
    pub fn for_client(&self, client: &str) -> &Arc<Policy> {
        if let Some(p) = self.exact.get(client) {
            return p;
        }
        self.prefixes
            .iter()
            .find_map(|(len, by_prefix)| by_prefix.get(client.get(..*len)?))
            .unwrap_or(&self.base)
    }
}

/// The configs of the moment, indexed for resolution. Immutable: a change builds a new
/// table and swaps it in, so readers never wait on writers for longer than an `Arc` clone.
#[derive(Debug)]
pub struct PolicyTable {
    configs: Vec<Config>,
    /// Exact paths, and descriptor rules by their identity (which no path can be).
    exact: HashMap<String, Rule>,
    /// `"/api/*"` is stored under `"/api"`, and `"/*"` under `""`.
    prefixes: HashMap<String, Rule>,
    default: Rule,
    /// Descriptor rules' patterns by domain, most specific first, each with the identity
    /// its rule is stored under in `exact`.
    descriptors: HashMap<String, Vec<(Pattern, String)>>,
}

/// The rule a request descriptor matched, and the values it counts under (the client
/// it names, or `(global)`; see [`PolicyTable::resolve_keyed`]).
pub struct Matched<'a> {
    pub policy: &'a Arc<Policy>,
    pub values: KeyValues,
}

/// The values a request counts under: its config's key's first (it picks the override,
/// and the request's statistics are kept under it), then one for each of
/// [`Policy::other_keys`]; a group counts under the one its `value` names.
pub type KeyValues = SmallVec<[Arc<str>; 1]>;

impl PolicyTable {
    /// Builds the table; `configs` must contain the default `"*"`.
    pub fn new(mut configs: Vec<Config>) -> Option<Self> {
        configs.sort_by(|a, b| a.endpoint().cmp(b.endpoint()));
        let mut exact = HashMap::new();
        let mut prefixes = HashMap::new();
        let mut default = None;
        let mut descriptors: HashMap<String, Vec<(Pattern, String)>> = HashMap::new();
        for config in &configs {
            let policy = Rule::new(&config.spec);
            let endpoint = config.endpoint();
            if let Some((domain, pattern)) = config.spec.rule() {
                descriptors
                    .entry(domain.to_owned())
                    .or_default()
                    .push((Pattern::new(pattern), endpoint.to_owned()));
                exact.insert(endpoint.to_owned(), policy);
            } else if endpoint == DEFAULT_ENDPOINT {
                default = Some(policy);
            } else if let Some(prefix) = endpoint.strip_suffix("/*") {
                prefixes.insert(prefix.to_owned(), policy);
            } else {
                exact.insert(endpoint.to_owned(), policy);
            }
        }
        for rules in descriptors.values_mut() {
            rules.sort_by(|(a, _), (b, _)| a.specificity().cmp(&b.specificity()));
        }
        Some(Self {
            configs,
            exact,
            prefixes,
            default: default?,
            descriptors,
        })
    }

    pub fn configs(&self) -> &[Config] {
        &self.configs
    }

    pub fn get(&self, endpoint: &str) -> Option<&Config> {
        self.configs
            .binary_search_by(|c| c.endpoint().cmp(endpoint))
            .ok()
            .map(|i| &self.configs[i])
    }

    /// The policy whose state a key value keeps under `slot` (see [`Policy::slot`]),
    /// with that value's override if it has one, and whether its config has several
    /// limits (so that each is shown by name).
    pub fn slot_policy(&self, slot: &str, value: &str) -> Option<(&Arc<Policy>, bool)> {
        let policy = match self.policy(slot, value) {
            Some(p) => p,
            None => self.policy(slot.rsplit_once(" [")?.0, value)?,
        };
        Some((policy.of_slot(slot)?, policy.several()))
    }

    pub fn active_count(&self) -> usize {
        self.configs.iter().filter(|c| c.spec.is_active).count()
    }

    /// The policy `client` gets under the config for `endpoint`, if there is one.
    pub fn policy(&self, endpoint: &str, client: &str) -> Option<&Arc<Policy>> {
        let rule = if endpoint == DEFAULT_ENDPOINT {
            Some(&self.default)
        } else {
            match endpoint.strip_suffix("/*") {
                Some(prefix) => self.prefixes.get(prefix),
                None => self.exact.get(endpoint),
            }
        };
        rule.map(|r| r.for_client(client))
    }

    /// The policy for a request path: exact match, else the longest matching prefix
    /// (`"/api/*"` matches `/api` and everything below `/api/`), else the default.
    /// An inactive winner is returned as such: it limits nothing, it does not fall back.
    /// Within the config, `client` gets its override if it has one.
    pub fn resolve(&self, path: &str, client: &str) -> &Arc<Policy> {
        self.rule(path).for_client(client)
    }

    /// The policy of a request to `path` and the values it is counted under: `value`
    /// finds each from a key, the config's first (which picks the override), then each
    /// of [`Policy::other_keys`].
    pub fn resolve_keyed<E>(
        &self,
        path: &str,
        value: impl Fn(&Key) -> Result<Arc<str>, E>,
    ) -> Result<(KeyValues, Arc<Policy>), E> {
        let rule = self.rule(path);
        let who = value(&rule.base.key)?;
        let policy = rule.for_client(&who).clone();
        let mut values = KeyValues::new();
        values.push(who.clone());
        for key in &policy.other_keys {
            values.push(value(key)?);
        }
        Ok((values, policy))
    }

    /// The descriptor rule of `domain` that a request descriptor (its entries, key and
    /// value, in order) matches, the most specific one if several do, and the client it
    /// names (see [`Pattern::client`]), with that client's override if it has one.
    pub fn match_descriptor<'a>(
        &self,
        domain: &str,
        entries: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Option<Matched<'_>> {
        let (pattern, identity) = self
            .descriptors
            .get(domain)?
            .iter()
            .find(|(p, _)| p.matches(entries.clone()))?;
        let rule = self.exact.get(identity)?;
        let value = |key: &Key| -> Arc<str> {
            match key {
                Key::Global => Arc::from(Key::GLOBAL),
                _ => Arc::from(pattern.client(domain, entries.clone())),
            }
        };
        let client = value(&rule.base.key);
        let policy = rule.for_client(&client);
        let mut values = KeyValues::new();
        values.push(client);
        values.extend(policy.other_keys.iter().map(value));
        Some(Matched { policy, values })
    }

    fn rule(&self, path: &str) -> &Rule {
        if let Some(p) = self.exact.get(path) {
            return p;
        }
        if !self.prefixes.is_empty() {
            if let Some(p) = self.prefixes.get(path) {
                return p;
            }
            let mut rest = path;
            while let Some(slash) = rest.rfind('/') {
                rest = &path[..slash];
                if let Some(p) = self.prefixes.get(rest) {
                    return p;
                }
            }
        }
        &self.default
    }
}

/// The live policy table, shared by the middleware (readers, on every request) and the
/// admin API (writers, one at a time). Writers hold `write` across the database write and
/// the swap, so the table always matches the database's order of changes.
#[derive(Debug)]
pub struct Policies {
    table: RwLock<Arc<PolicyTable>>,
    write: tokio::sync::Mutex<()>,
}

impl Policies {
    pub fn new(table: PolicyTable) -> Self {
        Self {
            table: RwLock::new(Arc::new(table)),
            write: tokio::sync::Mutex::new(()),
        }
    }

    pub fn current(&self) -> Arc<PolicyTable> {
        // The lock only guards an `Arc` swap; a poisoned lock still holds a whole table.
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serialises admin writes; hold the guard until [`Policies::apply`] is done.
    pub async fn lock_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write.lock().await
    }

    /// Swaps in the table with `changes` made (the caller holds the write lock, and the
    /// changes were computed against [`Policies::current`]). A change set that would
    /// remove the default policy changes nothing and answers `false`.
    pub fn apply(&self, changes: &[Change]) -> bool {
        let mut configs: Vec<Config> = self
            .current()
            .configs()
            .iter()
            .filter(|c| !changes.iter().any(|ch| ch.endpoint() == c.endpoint()))
            .cloned()
            .collect();
        configs.extend(changes.iter().filter_map(|ch| ch.after.clone()));
        match PolicyTable::new(configs) {
            Some(table) => {
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                true
            }
            None => {
                log::error!("refused a config change that would remove the default policy");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, limit: u64) -> Config {
        Config {
            id: 0,
            spec: ConfigSpec {
                endpoint: endpoint.to_owned(),
                requests_per_window: Some(limit),
                window_seconds: Some(60),
                algorithm: Some(crate::limiter::Algorithm::FixedWindow),
                ..ConfigSpec::default_policy()
            },
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn resolves_exact_then_longest_prefix_then_default() {
        let table = PolicyTable::new(vec![
            config("*", 1),
            config("/api/*", 2),
            config("/api/v1/*", 3),
            config("/api/v1/data", 4),
            config("/*", 5),
        ])
        .unwrap();
        let limit = |path| table.resolve(path, "c").limits[0].limit.quota();
        assert_eq!(limit("/api/v1/data"), 4);
        assert_eq!(limit("/api/v1/other"), 3);
        assert_eq!(limit("/api/v1"), 3);
        assert_eq!(limit("/api/x/y"), 2);
        assert_eq!(limit("/api"), 2);
        assert_eq!(limit("/apix"), 5);
        assert_eq!(limit("/"), 5);
        let table = PolicyTable::new(vec![config("*", 1), config("/api/*", 2)]).unwrap();
        assert_eq!(table.resolve("/other", "c").limits[0].limit.quota(), 1);
        assert_eq!(table.resolve("/apix", "c").limits[0].limit.quota(), 1);
    }

    #[test]
    fn a_table_needs_the_default() {
        assert!(PolicyTable::new(vec![config("/a", 1)]).is_none());
        let policies = Policies::new(PolicyTable::new(vec![config("*", 1)]).unwrap());
        let remove_default = Change {
            before: Some(config("*", 1)),
            after: None,
        };
        assert!(!policies.apply(&[remove_default]));
        let add = Change {
            before: None,
            after: Some(config("/a", 2)),
        };
        assert!(policies.apply(&[add]));
        assert_eq!(
            policies.current().resolve("/a", "c").limits[0]
                .limit
                .quota(),
            2
        );
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;
    use crate::config::Override;

    fn over(client: &str, limit: u64) -> Override {
        Override {
            client: client.to_owned(),
            limit: None,
            requests_per_window: limit,
            window_seconds: None,
            burst_limit: None,
            refill_rate: None,
        }
    }

    #[test]
    fn the_most_specific_override_wins() {
        let mut spec = ConfigSpec::default_policy();
        spec.overrides = vec![
            over("p*", 2),
            over("partner-*", 3),
            over("partner-gold", 4),
            over("partner-gold-*", 5),
        ];
        spec.validate().unwrap();
        let table = PolicyTable::new(vec![Config {
            id: 1,
            spec,
            created_at: 0,
            updated_at: 0,
        }])
        .unwrap();
        let limit = |client| table.resolve("/x", client).limits[0].limit.quota();
        assert_eq!(limit("other"), 100);
        assert_eq!(limit("pete"), 2);
        assert_eq!(limit("partner-x"), 3);
        assert_eq!(limit("partner-gold"), 4);
        assert_eq!(limit("partner-gold-2"), 5);
        let p = table.resolve("/x", "partner-x");
        assert_eq!((&*p.endpoint, p.tier.as_deref()), ("*", Some("partner-*")));
        assert_eq!(
            table.policy("*", "pete").unwrap().limits[0].limit.quota(),
            2
        );
        assert!(table.resolve("/x", "other").tier.is_none());
    }
}
