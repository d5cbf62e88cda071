//! The worker's API, called with the admin key by curl in the toolbox pod.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::cluster::Kb;
use crate::json::Json;
use crate::KB_NS;

impl Kb {
    /// `METHOD url` with the admin key, sent by curl in the toolbox pod (a body goes
    /// through stdin): the HTTP status (0 when no answer came) and the body (curl's error
    /// when there was none).
    fn call(&self, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
        let data = if body.is_some() {
            " --data-binary @-"
        } else {
            ""
        };
        let script = format!(
            r#"curl -sS -X "$1" --max-time 300 -H "authorization: Bearer $KB_KEY" -H 'content-type: application/json' -w '\n%{{http_code}}'{data} "$2""#
        );
        let toolbox = self.toolbox();
        let mut command = Command::new("kubectl");
        command.args(["exec", "-n", KB_NS]);
        if body.is_some() {
            command.arg("-i");
        }
        command
            .args([
                toolbox.as_str(),
                "--",
                "sh",
                "-c",
                &script,
                "sh",
                method,
                url,
            ])
            .stdin(if body.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl not runnable ({e})"));
        if let Some(body) = body {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (answer, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let answer = match answer {
            "" => String::from_utf8_lossy(&output.stderr).into_owned(),
            answer => answer.to_string(),
        };
        (status.trim().parse().unwrap_or(0), answer)
    }

    /// [`Kb::call`] that must answer 2xx with JSON.
    pub(crate) fn ok(&self, method: &str, url: &str, body: Option<&str>) -> Json {
        let (status, answer) = self.call(method, url, body);
        assert!(
            (200..300).contains(&status),
            "{method} {url} answered {status}: {answer}"
        );
        Json::parse(&answer)
    }

    /// Ingests `count` documents `{prefix}-NNNN` of `words` words into `docs` through the
    /// Service, `batch` per request (`?wait=applied`); returns their ids.
    pub(crate) fn ingest(
        &self,
        prefix: &str,
        count: usize,
        words: usize,
        batch: usize,
    ) -> BTreeSet<String> {
        let url = format!(
            "{}/v1/collections/docs/documents?wait=applied",
            self.service()
        );
        for start in (0..count).step_by(batch) {
            let body = documents(prefix, start..count.min(start + batch), words);
            self.ok("POST", &url, Some(&body));
        }
        (0..count).map(|i| format!("{prefix}-{i:04}")).collect()
    }

    /// Every document id of `docs` on the worker at `base` (paged in id order).
    pub(crate) fn document_ids(&self, base: &str) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let mut after = String::new();
        loop {
            let url = format!("{base}/v1/collections/docs/documents?limit=1000{after}");
            let page = self.ok("GET", &url, None);
            for document in page.get("documents").items() {
                ids.insert(document.get("id").str().unwrap().to_string());
            }
            match page.get("next").str() {
                Some(next) => after = format!("&after={next}"),
                None => return ids,
            }
        }
    }

    /// `GET /v1/collections/docs` on the worker at `base` (through an alias: its collection).
    pub(crate) fn collection(&self, base: &str) -> Json {
        self.ok("GET", &format!("{base}/v1/collections/docs"), None)
    }

    /// Where each alias points, as `alias -> collection`, on the worker at `base`.
    pub(crate) fn aliases(&self, base: &str) -> Vec<(String, String)> {
        let answer = self.ok("GET", &format!("{base}/v1/aliases"), None);
        let aliases = answer.get("aliases").items().iter();
        aliases
            .map(|a| {
                let name = a.get("alias").str().unwrap_or_default().to_string();
                (
                    name,
                    a.get("collection").str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The re-index jobs the worker at `base` knows, as `(id, state)`.
    pub(crate) fn jobs(&self, base: &str) -> Vec<(String, String)> {
        let answer = self.ok("GET", &format!("{base}/v1/jobs"), None);
        let jobs = answer.get("jobs").items().iter();
        jobs.map(|j| {
            let id = j.get("id").str().unwrap_or_default().to_string();
            (id, j.get("state").str().unwrap_or_default().to_string())
        })
        .collect()
    }
}

/// `{"documents":[...]}` of the documents `{prefix}-NNNN` for `range`, each of `words`
/// words drawn from a small vocabulary.
pub(crate) fn documents(prefix: &str, range: std::ops::Range<usize>, words: usize) -> String {
    const VOCABULARY: [&str; 16] = [
        "index",
        "vector",
        "replica",
        "collection",
        "model",
        "query",
        "passage",
        "chunk",
        "alias",
        "stream",
        "snapshot",
        "worker",
        "operator",
        "cluster",
        "redis",
        "embedding",
    ];
    let documents: Vec<String> = range
        .map(|i| {
            let text: Vec<&str> = (0..words)
                .map(|k| VOCABULARY[(i * 7 + k * k * 3 + k) % VOCABULARY.len()])
                .collect();
            format!(
                r#"{{"id":"{prefix}-{i:04}","text":"Seed document number {i}: {}."}}"#,
                text.join(" ")
            )
        })
        .collect();
    format!(r#"{{"documents":[{}]}}"#, documents.join(","))
}
