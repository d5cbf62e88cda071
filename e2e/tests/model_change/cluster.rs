//! The cluster side: helm and kubectl, the KnowledgeBase under test and its toolbox pod.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{KB_NS, OPERATOR_NS, REPLICAS, SPEC};

pub(crate) use kb_operator_e2e::{kubectl_quietly, run};

pub(crate) fn install(extra: &[&str]) {
    kb_operator_e2e::install(OPERATOR_NS, KB_NS, extra);
}

fn apply(name: &str, spec: &str) {
    kb_operator_e2e::apply(KB_NS, name, spec);
}

pub(crate) fn get(what: &str, path: &str) -> String {
    kb_operator_e2e::get(KB_NS, what, path)
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn curl_image() -> String {
    std::env::var("KB_E2E_CURL_IMAGE").unwrap_or_else(|_| "curlimages/curl:8.11.1".to_string())
}

/// A KnowledgeBase under test, reached from its toolbox pod.
pub(crate) struct Kb {
    pub(crate) name: &'static str,
}

impl Kb {
    pub(crate) fn resource(&self) -> String {
        format!("kb/{}", self.name)
    }

    pub(crate) fn toolbox(&self) -> String {
        format!("{}-e2e-toolbox", self.name)
    }

    pub(crate) fn client(&self) -> String {
        format!("{}-e2e-client", self.name)
    }

    /// The Service clients use (ready pods only).
    pub(crate) fn service(&self) -> String {
        format!("http://{}:8080", self.name)
    }

    /// One worker pod, through the headless Service (which publishes unready pods too).
    pub(crate) fn worker(&self, ordinal: usize) -> String {
        format!("http://{0}-worker-{ordinal}.{0}-headless:8080", self.name)
    }

    /// Removes what an earlier, failed run left: the KnowledgeBase, its claims (so the
    /// data starts empty) and the helper pods.
    fn fresh(&self) {
        let resource = self.resource();
        let (toolbox, client) = (self.toolbox(), self.client());
        let instance = format!("app.kubernetes.io/instance={}", self.name);
        kubectl_quietly(&[
            "delete",
            "-n",
            KB_NS,
            "pod",
            &toolbox,
            &client,
            "--ignore-not-found",
            "--grace-period=1",
            "--wait=true",
        ]);
        kubectl_quietly(&[
            "delete",
            "-n",
            KB_NS,
            &resource,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=3m",
        ]);
        kubectl_quietly(&[
            "delete",
            "-n",
            KB_NS,
            "pvc",
            "-l",
            &instance,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=3m",
        ]);
    }

    /// Applies the KnowledgeBase and waits for `Ready`, then starts the toolbox pod.
    pub(crate) fn create(&self) {
        self.create_with(SPEC);
    }

    /// [`Kb::create`] with another spec.
    pub(crate) fn create_with(&self, spec: &str) {
        self.fresh();
        apply(self.name, spec);
        self.wait_ready();
        self.start_pod(&self.toolbox(), "exec sleep 3600\n");
        run(
            "kubectl",
            &[
                "wait",
                "-n",
                KB_NS,
                &format!("pod/{}", self.toolbox()),
                "--for=condition=Ready",
                "--timeout=5m",
            ],
        );
    }

    pub(crate) fn wait_ready(&self) {
        run(
            "kubectl",
            &[
                "wait",
                "-n",
                KB_NS,
                &self.resource(),
                "--for=condition=Ready",
                "--timeout=10m",
            ],
        );
    }

    /// A `curlimages/curl` pod running `script` with `KB_URL` (the Service) and `KB_KEY`
    /// (the generated admin key). Its labels are not the KnowledgeBase's, so the
    /// operator's default-deny policy does not select it; with no `network.allowed*`
    /// clients, every pod of the namespace may call the workers (docs/operator.md,
    /// "network").
    pub(crate) fn start_pod(&self, pod: &str, script: &str) {
        let script: String = script.lines().map(|l| format!("          {l}\n")).collect();
        let manifest = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  labels: {{app.kubernetes.io/name: kb-e2e-client}}
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 3600
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 100
    seccompProfile: {{type: RuntimeDefault}}
  containers:
    - name: curl
      image: {image}
      command: [sh, -c]
      args:
        - |
{script}      env:
        - {{name: KB_URL, value: "{url}"}}
        - name: KB_KEY
          valueFrom: {{secretKeyRef: {{name: {kb}-api-keys, key: admin-key}}}}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {{drop: [ALL]}}
"#,
            image = curl_image(),
            url = self.service(),
            kb = self.name,
        );
        let file = std::env::temp_dir().join(format!("kb-e2e-{pod}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        run(
            "kubectl",
            &["apply", "-n", KB_NS, "-f", file.to_str().unwrap()],
        );
    }

    /// The reasons of this KnowledgeBase's Events. The operator publishes through kube's
    /// Recorder (events.k8s.io/v1, `regarding` this object), which `kubectl get events`
    /// shows as core/v1 Events with `involvedObject`; the uid leaves out the Events of an
    /// earlier KnowledgeBase of the same name.
    pub(crate) fn event_reasons(&self) -> Vec<String> {
        let uid = get(&self.resource(), "{.metadata.uid}");
        let selector = format!("involvedObject.uid={uid}");
        let reasons = run(
            "kubectl",
            &[
                "get",
                "events",
                "-n",
                KB_NS,
                "--field-selector",
                &selector,
                "-o",
                "jsonpath={.items[*].reason}",
            ],
        );
        reasons.split_whitespace().map(String::from).collect()
    }

    pub(crate) fn patch(&self, patch: &str) {
        run(
            "kubectl",
            &[
                "patch",
                "-n",
                KB_NS,
                &self.resource(),
                "--type=merge",
                "-p",
                patch,
            ],
        );
    }

    /// After the shrink: the added worker's claim is deleted with its pod
    /// (`whenScaled: Delete` while the StatefulSet had added pods), then the policy is
    /// `Retain` again and the surge annotation gone.
    pub(crate) fn wait_added_claim_deleted(&self) {
        let workers = format!("statefulset/{}-worker", self.name);
        let added = format!("data-{}-worker-{REPLICAS}", self.name);
        wait_until(
            &format!("claim {added} deleted"),
            Duration::from_secs(180),
            || {
                !get("pvc", "{.items[*].metadata.name}")
                    .split_whitespace()
                    .any(|c| c == added)
            },
        );
        wait_until(
            "the StatefulSet's claims retained on scale-down again",
            Duration::from_secs(60),
            || {
                get(
                    &workers,
                    "{.spec.persistentVolumeClaimRetentionPolicy.whenScaled}",
                ) == "Retain"
                    && get(&workers, "{.metadata.annotations}")
                        .find("model-surge")
                        .is_none()
            },
        );
    }

    /// The text of the configuration key (`config-<hash>.yaml`) worker pod `ordinal`
    /// mounts as its `config.yaml`, as the ConfigMap holds it now (empty once removed).
    pub(crate) fn mounted_config(&self, ordinal: usize) -> String {
        let pod = format!("pod/{}-worker-{ordinal}", self.name);
        let key = get(
            &pod,
            r#"{.spec.volumes[?(@.name=="config")].configMap.items[0].key}"#,
        );
        assert!(key.starts_with("config-"), "{pod} mounts {key:?}");
        self.config(&key)
    }

    /// One key of the worker ConfigMap.
    pub(crate) fn config(&self, key: &str) -> String {
        let path = format!("{{.data.{}}}", key.replace('.', "\\."));
        get(&format!("configmap/{}-worker", self.name), &path)
    }

    /// How many per-revision configurations (`config-<hash>.yaml`) the ConfigMap holds.
    pub(crate) fn pinned_configs(&self) -> usize {
        let data = get(&format!("configmap/{}-worker", self.name), "{.data}");
        data.matches("\"config-").count()
    }

    /// Deletes worker pod `ordinal` without waiting; its uid before.
    pub(crate) fn delete_worker(&self, ordinal: usize) -> String {
        let pod = format!("{}-worker-{ordinal}", self.name);
        let uid = get(&format!("pod/{pod}"), "{.metadata.uid}");
        run(
            "kubectl",
            &["delete", "-n", KB_NS, "pod", &pod, "--wait=false"],
        );
        uid
    }

    pub(crate) fn cleanup(&self) {
        if std::env::var_os("KB_E2E_KEEP").is_some() {
            return;
        }
        let (toolbox, client) = (self.toolbox(), self.client());
        kubectl_quietly(&[
            "delete",
            "-n",
            KB_NS,
            "pod",
            &toolbox,
            &client,
            "--ignore-not-found",
            "--grace-period=1",
        ]);
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "-n",
                KB_NS,
                &self.resource(),
                "--wait=true",
                "--timeout=2m",
            ])
            .status();
    }
}
