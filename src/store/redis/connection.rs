//! Where distributed mode's connections to Redis are made, and nowhere else: one server,
//! the seed nodes of a Redis Cluster, or the primary that Redis Sentinel names. Every
//! other part (the decision scripts, the shared configs, the feed relay) takes a
//! [`Conn`] or a [`redis::aio::PubSub`] from here and does not know which it is.

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// What `--redis-url` names (with `--redis-cluster`): parsed once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// `redis://` URLs: one server, or with `--redis-cluster` the seed nodes of a
    /// Redis Cluster (comma-separated).
    Nodes(Vec<String>),
    /// `redis+sentinel://host:port[,host:port...]/<service>`: the sentinels (each as a
    /// `redis://` URL) and the name of the primary they monitor.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

/// The port Redis Sentinel listens on unless told otherwise.
const SENTINEL_PORT: u16 = 26379;

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("redis+sentinel://") {
            return sentinel_url(rest).map_err(|why| format!("{s:?}: {why}"));
        }
        let nodes: Vec<String> = s.split(',').map(|u| u.trim().to_owned()).collect();
        for url in &nodes {
            redis::parse_redis_url(url)
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                .ok_or_else(|| format!("{url:?} is not a redis:// or redis+sentinel:// URL"))?;
        }
        Ok(RedisUrl::Nodes(nodes))
    }
}

/// `host:port[,host:port...]/<service>`, after the scheme.
fn sentinel_url(rest: &str) -> Result<RedisUrl, String> {
    let (hosts, service) = rest
        .split_once('/')
        .ok_or("name the monitored service: redis+sentinel://host:port/<service>")?;
    if hosts.contains('@') {
        return Err("credentials in a Sentinel URL are not supported".to_owned());
    }
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !service_ok {
        return Err(format!(
            "the service name {service:?} must be letters, digits, '.', '_' or '-'"
        ));
    }
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let url = match host.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                format!("redis://{host}")
            }
            None if !host.is_empty() => format!("redis://{host}:{SENTINEL_PORT}"),
            _ => return Err(format!("{host:?} is not a sentinel's host[:port]")),
        };
        redis::parse_redis_url(&url).ok_or_else(|| format!("{host:?} is not a host[:port]"))?;
        sentinels.push(url);
    }
    Ok(RedisUrl::Sentinel {
        sentinels,
        service: service.to_owned(),
    })
}

/// Where to connect.
#[derive(Clone)]
pub(super) enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The seed nodes, for pub/sub (a PUBLISH on any node reaches every node).
        seeds: Vec<redis::Client>,
    },
    /// Asked of the sentinels at every connection, so that a promoted replica is
    /// followed by the next connection made after the old primary failed.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

impl Target {
    /// Checks the URLs; connects nothing yet. `timeout`: each call's; a cluster's
    /// client is built with it.
    pub(super) fn new(url: &RedisUrl, cluster: bool, timeout: Duration) -> Result<Self, String> {
        let open = |url: &str| redis::Client::open(url).map_err(|e| e.to_string());
        Ok(match (url, cluster) {
            (RedisUrl::Nodes(urls), false) => match urls.as_slice() {
                [one] => Target::Single(open(one)?),
                _ => {
                    return Err(
                        "--redis-url names several servers: add --redis-cluster for a Redis Cluster"
                            .to_owned(),
                    );
                }
            },
            (RedisUrl::Nodes(urls), true) => Target::Cluster {
                client: Box::new(
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(connect_timeout(timeout))
                        .response_timeout(timeout)
                        .retries(1)
                        .build()
                        .map_err(|e| e.to_string())?,
                ),
                seeds: urls.iter().map(|u| open(u)).collect::<Result<_, _>>()?,
            },
            (RedisUrl::Sentinel { .. }, true) => {
                return Err(
                    "--redis-cluster takes redis:// seed nodes, not a redis+sentinel:// URL"
                        .to_owned(),
                );
            }
            (RedisUrl::Sentinel { sentinels, service }, false) => Target::Sentinel {
                sentinels: sentinels.clone(),
                service: service.clone(),
            },
        })
    }

    /// A new connection that answered PING, within [`connect_timeout`] in all.
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, RedisError> {
        let opening = async {
            let mut conn = match self {
                Target::Cluster { client, .. } => {
                    Conn::Cluster(client.get_async_connection().await?)
                }
                _ => {
                    let settings = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect_timeout(timeout)))
                        .set_response_timeout(Some(timeout));
                    let node = self.node(0).await?;
                    Conn::Single(
                        node.get_multiplexed_async_connection_with_config(&settings)
                            .await?,
                    )
                }
            };
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(conn)
        };
        actix_web::rt::time::timeout(connect_timeout(timeout), opening)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    }

    /// A subscription connection: the server, the primary the sentinels name now, or
    /// (`attempt` counting the failures since the last that worked) each seed node of a
    /// cluster in turn.
    pub(super) async fn pubsub(&self, attempt: usize, timeout: Duration) -> RedisResult<PubSub> {
        let opening = async { self.node(attempt).await?.get_async_pubsub().await };
        actix_web::rt::time::timeout(connect_timeout(timeout), opening)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    }

    /// One node to connect to directly.
    async fn node(&self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
            Target::Sentinel { sentinels, service } => {
                // Asks each sentinel in turn, and checks with ROLE that the node it names
                // is a primary.
                let mut sentinel = redis::sentinel::Sentinel::build(sentinels.clone())?;
                sentinel.async_master_for(service, None).await
            }
        }
    }
}

/// How long opening a connection may take: a call's timeout, but never under 200 ms.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(200))
}

/// A live connection; both kinds multiplex every concurrent call over their sockets,
/// which pipelines the checks of many requests without waiting for each answer.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_seed_nodes_or_sentinels() {
        let parse = |s: &str| s.parse::<RedisUrl>();
        assert_eq!(
            parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001"),
            Ok(RedisUrl::Nodes(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            parse("redis+sentinel://10.0.0.1:26380,s2,[::1]:26381/my-primary"),
            Ok(RedisUrl::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26380".into(),
                    "redis://s2:26379".into(),
                    "redis://[::1]:26381".into()
                ],
                service: "my-primary".into()
            })
        );
        for bad in [
            "http://localhost:6379",
            "not a url",
            "redis://a,http://b",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:26379/a/b",
            "redis+sentinel://s1:0/p",
            "redis+sentinel://s1:x/p",
            "redis+sentinel://,s2/p",
            "redis+sentinel://:secret@s1/p",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let sentinel = parse("redis+sentinel://s1/p").unwrap();
        assert!(Target::new(&sentinel, true, Duration::from_millis(50)).is_err());
        assert!(Target::new(&sentinel, false, Duration::from_millis(50)).is_ok());
        let two = parse("redis://a,redis://b").unwrap();
        assert!(Target::new(&two, false, Duration::from_millis(50)).is_err());
    }
}
