//! Rotating the managed-Redis password without an outage.
//!
//! To rotate, write a new `password` into the Secret `<name>-redis`. Redis reads its
//! password only at start (`auth.conf`, included by `redis.conf`), and the workers read
//! theirs only at start (`worker-password`, an environment variable), so neither may move
//! before the other can follow. The operator moves them in three steps, each once the
//! previous one has rolled out:
//!
//! 1. `auth.conf` accepts both the password the workers hold and the new one
//!    (`user default on >old >new`); Redis restarts with it. Workers, old or restarted,
//!    still present the old password, which is accepted.
//! 2. Once Redis runs that configuration: `worker-password` becomes the new password and
//!    the workers roll (their pod template carries its hash); Redis accepts both.
//! 3. Once every worker runs with the new password: `auth.conf` accepts only the new one
//!    and Redis restarts again.
//!
//! At no point does a worker hold a password the Redis it talks to rejects; the two Redis
//! restarts pause writes for a few seconds each (workers retry Redis at start, and
//! answer 503 to writes meanwhile). Changing `password` again mid-way restarts the
//! sequence from the password the workers hold.

use super::build::{
    SecretData, REDIS_AUTH_CONF_KEY, REDIS_PASSWORD_KEY, REDIS_WORKER_PASSWORD_KEY,
};
use k8s_openapi::ByteString;

/// What has rolled out, read from the StatefulSets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Redis runs the `auth.conf` the Secret holds, ready.
    pub redis: bool,
    /// Every worker runs with the `worker-password` the Secret holds, ready.
    pub workers: bool,
}

/// The passwords `auth.conf` accepts.
pub fn accepted(conf: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(conf);
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["requirepass", password] => out.push(password.as_bytes().to_vec()),
            ["user", "default", rest @ ..] => out.extend(
                rest.iter()
                    .filter_map(|w| w.strip_prefix('>'))
                    .map(|p| p.as_bytes().to_vec()),
            ),
            _ => {}
        }
    }
    out
}

/// `auth.conf` accepting `passwords` (one: `requirepass`, as before rotations existed).
pub fn conf(passwords: &[Vec<u8>]) -> Vec<u8> {
    match passwords {
        [one] => [b"requirepass ".as_slice(), one, b"\n"].concat(),
        many => {
            let mut line = b"user default on".to_vec();
            for password in many {
                line.extend_from_slice(b" >");
                line.extend_from_slice(password);
            }
            line.extend_from_slice(b" ~* &* +@all\n");
            line
        }
    }
}

/// The Secret's data after the next step of a rotation (or as it is when none is due).
/// `data` holds at least `password`; `auth.conf` and `worker-password` are filled in for
/// a Secret that has none yet (a new KnowledgeBase, or one made before rotations).
pub fn step(mut data: SecretData, settled: Settled) -> SecretData {
    let Some(wanted) = data.get(REDIS_PASSWORD_KEY).map(|p| p.0.clone()) else {
        return data;
    };
    let mut accepts = data
        .get(REDIS_AUTH_CONF_KEY)
        .map(|c| accepted(&c.0))
        .unwrap_or_default();
    if accepts.is_empty() {
        accepts = vec![wanted.clone()];
    }
    let worker = data
        .get(REDIS_WORKER_PASSWORD_KEY)
        .map(|p| p.0.clone())
        .unwrap_or_else(|| accepts[0].clone());
    let (accepts, worker) = if !accepts.contains(&wanted) {
        // Step 1: Redis accepts the workers' password and the new one.
        let mut both = vec![worker.clone()];
        both.push(wanted.clone());
        (both, worker)
    } else if worker != wanted && settled.redis {
        // Step 2: the workers move to the new password.
        (accepts, wanted.clone())
    } else if worker == wanted && accepts.len() > 1 && settled.redis && settled.workers {
        // Step 3: Redis stops accepting the old one.
        (vec![wanted.clone()], worker)
    } else {
        (accepts, worker)
    };
    data.insert(REDIS_AUTH_CONF_KEY.into(), ByteString(conf(&accepts)));
    data.insert(REDIS_WORKER_PASSWORD_KEY.into(), ByteString(worker));
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(password: &str) -> SecretData {
        SecretData::from([(REDIS_PASSWORD_KEY.to_string(), ByteString(password.into()))])
    }

    fn state(data: &SecretData) -> (Vec<String>, String) {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        (
            accepted(&data[REDIS_AUTH_CONF_KEY].0)
                .iter()
                .map(|p| text(p))
                .collect(),
            text(&data[REDIS_WORKER_PASSWORD_KEY].0),
        )
    }

    const ALL: Settled = Settled {
        redis: true,
        workers: true,
    };

    #[test]
    fn a_new_secret_gets_one_password_for_redis_and_workers() {
        let data = step(secret("a"), Settled::default());
        assert_eq!(state(&data), (vec!["a".into()], "a".into()));
        assert_eq!(data[REDIS_AUTH_CONF_KEY].0, b"requirepass a\n");
        assert_eq!(step(data.clone(), ALL), data, "steady");
    }

    #[test]
    fn a_rotation_moves_redis_then_workers_then_drops_the_old_password() {
        let mut data = step(secret("old"), ALL);
        data.insert(REDIS_PASSWORD_KEY.into(), ByteString("new".into()));
        let one = step(data, Settled::default());
        assert_eq!(
            state(&one),
            (vec!["old".into(), "new".into()], "old".into())
        );
        // Redis has not restarted yet: the workers wait.
        assert_eq!(step(one.clone(), Settled::default()), one);
        let two = step(
            one,
            Settled {
                redis: true,
                workers: false,
            },
        );
        assert_eq!(
            state(&two),
            (vec!["old".into(), "new".into()], "new".into())
        );
        // The workers are rolling: Redis keeps both.
        assert_eq!(
            step(
                two.clone(),
                Settled {
                    redis: true,
                    workers: false
                }
            ),
            two
        );
        let three = step(two, ALL);
        assert_eq!(state(&three), (vec!["new".into()], "new".into()));
        assert_eq!(step(three.clone(), ALL), three);
    }

    #[test]
    fn a_second_rotation_mid_way_restarts_from_the_workers_password() {
        let mut data = step(secret("a"), ALL);
        data.insert(REDIS_PASSWORD_KEY.into(), ByteString("b".into()));
        let mut data = step(data, Settled::default());
        data.insert(REDIS_PASSWORD_KEY.into(), ByteString("c".into()));
        let data = step(data, ALL);
        assert_eq!(state(&data), (vec!["a".into(), "c".into()], "a".into()));
    }

    #[test]
    fn a_secret_made_before_rotations_keeps_its_password() {
        let mut data = secret("p");
        data.insert(
            REDIS_AUTH_CONF_KEY.into(),
            ByteString(b"requirepass p\n".to_vec()),
        );
        let data = step(data, Settled::default());
        assert_eq!(state(&data), (vec!["p".into()], "p".into()));
    }
}
