//! The configs every instance shares, in Redis: one hash (`rw:{config}:all`, endpoint
//! → [`Config`] JSON) with a version counter. Writes are compare-and-set scripts of the
//! version that also announce the new one on the `rw:config` channel; what instances do
//! with them is `crate::cluster`'s.

use super::{
    CONFIG_CHANNEL, CONFIG_ID_KEY, CONFIG_VERSION_KEY, CONFIGS_KEY, Redis, RedisUnavailable,
};
use crate::config::Config;

impl Redis {
    /// The version and configs Redis holds (`None` for the version when no instance has
    /// seeded them yet), each parsed or the reason it was refused.
    pub async fn shared_configs(&self) -> Result<SharedTable, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.all.prepare_invoke();
        call.key(CONFIGS_KEY).key(CONFIG_VERSION_KEY);
        let mut conn = self.conn()?;
        let (version, pairs): (String, Vec<(String, String)>) =
            self.observe(call.invoke_async(&mut conn).await)?;
        Ok(SharedTable {
            version: version.parse().ok(),
            configs: pairs
                .into_iter()
                .map(|(endpoint, json)| {
                    let parsed = Config::parse(&json);
                    (endpoint, json, parsed)
                })
                .collect(),
        })
    }

    /// A fresh config id, unique across the cluster.
    pub async fn next_config_id(&self) -> Result<i64, RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply = redis::cmd("INCR")
            .arg(CONFIG_ID_KEY)
            .query_async(&mut conn)
            .await;
        self.observe(reply)
    }

    /// Writes `writes` (endpoint, and its JSON or `None` to delete) as one change if the
    /// shared configs' version is still `read`: `Ok(Ok(version))` when written,
    /// `Ok(Err(()))` when another writer changed them first.
    pub async fn swap_configs(
        &self,
        read: u64,
        writes: &[(String, Option<String>)],
    ) -> Result<Result<u64, ()>, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.cas.prepare_invoke();
        call.key(CONFIGS_KEY)
            .key(CONFIG_VERSION_KEY)
            .arg(read)
            .arg(CONFIG_CHANNEL);
        for (endpoint, json) in writes {
            call.arg(endpoint).arg(json.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn()?;
        let (written, version): (u64, String) = self.observe(call.invoke_async(&mut conn).await)?;
        Ok(match written {
            1 => Ok(version.parse().unwrap_or(0)),
            _ => Err(()),
        })
    }

    /// Seeds the shared configs with `configs` unless Redis has some; whether it did.
    pub async fn seed_configs(&self, configs: &[Config]) -> Result<bool, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.seed.prepare_invoke();
        call.key(CONFIGS_KEY)
            .key(CONFIG_VERSION_KEY)
            .key(CONFIG_ID_KEY)
            .arg(configs.iter().map(|c| c.id).max().unwrap_or(0));
        for c in configs {
            call.arg(c.endpoint()).arg(c.to_json());
        }
        let mut conn = self.conn()?;
        let seeded: u64 = self.observe(call.invoke_async(&mut conn).await)?;
        Ok(seeded == 1)
    }

    /// The configs' current version alone (one cheap GET, for the once-a-second check).
    pub async fn config_version(&self) -> Result<Option<u64>, RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply: Result<Option<u64>, _> = redis::cmd("GET")
            .arg(CONFIG_VERSION_KEY)
            .query_async(&mut conn)
            .await;
        self.observe(reply)
    }
}

/// The shared configs as read from Redis.
pub struct SharedTable {
    /// `None` until the first instance seeds them.
    pub version: Option<u64>,
    /// Endpoint, the stored JSON, and the config or why it was refused.
    pub configs: Vec<(String, String, Result<Config, String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_configs_are_validated_like_input() {
        let good = r#"{"id":3,"endpoint":"/api/*","requests_per_window":5,"window_seconds":60,
            "algorithm":"token_bucket","burst_limit":null,"refill_rate":2.5,"is_active":true,
            "created_at":1800000000000000001,"updated_at":1800000000000000002}"#;
        let c = Config::parse(good).unwrap();
        assert_eq!((c.id, c.created_at), (3, 1_800_000_000_000_000_001));
        assert_eq!(Config::parse(&c.to_json()).unwrap(), c);
        let bad = good.replace("\"requests_per_window\":5", "\"requests_per_window\":0");
        assert!(Config::parse(&bad).is_err());
        assert!(Config::parse("{}").is_err());
        // A field this instance does not know (written by a newer one) is not ignored.
        let newer = good.replace("\"is_active\":true", "\"is_active\":true,\"colour\":1");
        assert!(Config::parse(&newer).is_err());
    }
}
