//! The in-cluster client pod: its script, starting and stopping it, reading its log.

use std::time::Duration;

use crate::cluster::{get, run, wait_until, Kb};
use crate::KB_NS;

/// The client pod's loop (POSIX sh; `KB_URL` and `KB_KEY` come from the pod's environment).
/// Until `/tmp/client-stop` exists (or 45 minutes passed), one text query of `docs`, then
/// one write of the new document `w-N`, both through the Service, no retries. One line per
/// request: `<query|write> <id> <HTTP status, 000 when no answer> <unix seconds>`, and for
/// an answer other than 2xx the body or curl's error (at most 300 bytes). Its last line is
/// `stopped after N rounds`.
const CLIENT_SCRIPT: &str = r#"end=$(( $(date +%s) + 2700 ))
n=0
call() {
  rm -f /tmp/client-body /tmp/client-err
  code=$(curl -sS -o /tmp/client-body -w '%{http_code}' --max-time 30 \
    -H "authorization: Bearer $KB_KEY" -H 'content-type: application/json' \
    --data-binary "$3" "$KB_URL$4" 2>/tmp/client-err)
  case "$code" in
    2??) echo "$1 $2 $code $(date +%s)" ;;
    *) printf '%s %s %s %s %s\n' "$1" "$2" "${code:-000}" "$(date +%s)" \
      "$(cat /tmp/client-body /tmp/client-err 2>/dev/null | head -c 300 | tr '\n' ' ')" ;;
  esac
}
while [ ! -e /tmp/client-stop ] && [ "$(date +%s)" -lt "$end" ]; do
  n=$((n + 1))
  call query "q-$n" "{\"query\":\"seed document number $n\",\"top_k\":3}" /v1/collections/docs/query
  call write "w-$n" "{\"documents\":[{\"id\":\"w-$n\",\"text\":\"written during the model change, number $n\"}]}" /v1/collections/docs/documents
  sleep 0.2 2>/dev/null || sleep 1
done
echo "stopped after $n rounds"
"#;

/// One line of the client's log: `query q-7 200 1767225600`, or
/// `write w-7 409 1767225601 {"error":{"code":"model_mismatch",...}}`.
#[derive(Debug, PartialEq)]
pub(crate) struct Request<'a> {
    pub(crate) kind: &'a str,
    pub(crate) id: &'a str,
    pub(crate) status: &'a str,
    pub(crate) line: &'a str,
}

/// The client's log: its requests, the `N` of `stopped after N rounds` (absent when the
/// loop did not end) and every other line (shell errors).
pub(crate) fn parse_client_log(log: &str) -> (Vec<Request<'_>>, Option<usize>, Vec<&str>) {
    let (mut requests, mut rounds, mut other) = (Vec::new(), None, Vec::new());
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [kind @ ("query" | "write"), id, status, _time, ..] => requests.push(Request {
                kind,
                id,
                status,
                line,
            }),
            ["stopped", "after", n, "rounds"] if n.parse::<usize>().is_ok() => {
                rounds = n.parse().ok();
            }
            _ => other.push(line),
        }
    }
    (requests, rounds, other)
}

impl Kb {
    fn client_pod(&self) -> String {
        format!("pod/{}", self.client())
    }

    fn client_log(&self) -> String {
        run("kubectl", &["logs", "-n", KB_NS, &self.client_pod()])
    }

    /// Starts the client pod and waits for its first rounds, which must all have
    /// succeeded.
    pub(crate) fn start_client(&self) {
        let client_pod = self.client_pod();
        self.start_pod(&self.client(), CLIENT_SCRIPT);
        wait_until(
            "the client's first rounds",
            Duration::from_secs(300),
            || {
                get(&client_pod, "{.status.phase}") == "Running"
                    && self.client_log().contains("write w-5 ")
            },
        );
        let early = self.client_log();
        let (requests, _, other) = parse_client_log(&early);
        let failed: Vec<&str> = requests
            .iter()
            .filter(|r| !r.status.starts_with('2'))
            .map(|r| r.line)
            .collect();
        assert!(
            failed.is_empty() && other.is_empty(),
            "the client fails before the model change (network policy? key?):\n{early}"
        );
    }

    /// Tells the client to stop, waits until its pod has ended and returns its log.
    pub(crate) fn stop_client(&self) -> String {
        run(
            "kubectl",
            &[
                "exec",
                "-n",
                KB_NS,
                &self.client(),
                "--",
                "touch",
                "/tmp/client-stop",
            ],
        );
        wait_until("the client to stop", Duration::from_secs(120), || {
            get(&self.client_pod(), "{.status.phase}") == "Succeeded"
        });
        self.client_log()
    }
}
