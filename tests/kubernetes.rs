//! `deploy/kubernetes/` agrees with the pgveil.yaml it mounts: the config
//! and the policy load, the container serves the config file the
//! ConfigMap provides, its ports are the config's `listen` and
//! `metrics.listen`, the probes ask /healthz and /readyz on the admin
//! port, every file the config names is inside a volume that provides it,
//! every `${VAR}` is set by the container, the Service reaches both ports,
//! and the grace period outlasts `shutdown_timeout`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every manifest, by (kind, name).
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    for file in kustomization["resources"].as_sequence().unwrap() {
        let file = file.as_str().unwrap();
        let text = std::fs::read_to_string(dir().join(file)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = v["kind"].as_str().unwrap().to_string();
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            assert!(
                out.insert((kind.clone(), name.clone()), v).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    // Every manifest file is listed.
    for e in std::fs::read_dir(dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            let listed = kustomization["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|r| r.as_str() == Some(name.as_str()));
            assert!(listed, "kustomization.yaml does not list {name}");
        }
    }
    out
}

fn get<'a>(m: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    m.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/kubernetes"))
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// A container port by name or number.
fn container_port(container: &Value, port: &Value) -> u64 {
    let ports = container["ports"].as_sequence().unwrap();
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("port {other:?}"),
    }
}

/// The (volume, key) that provides `path` in the container, if any: a
/// ConfigMap or Secret volume mounted at `path`'s directory holding a key
/// of its file name.
fn provided_by<'a>(
    m: &'a BTreeMap<(String, String), Value>,
    pod: &'a Value,
    container: &'a Value,
    path: &str,
) -> Option<(&'a Value, String)> {
    let p = Path::new(path);
    let (dir, file) = (p.parent()?.to_str()?, p.file_name()?.to_str()?);
    let mount = container["volumeMounts"]
        .as_sequence()?
        .iter()
        .find(|vm| vm["mountPath"].as_str() == Some(dir))?;
    let volume = pod["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let source = if let Some(cm) = volume["configMap"]["name"].as_str() {
        get(m, "ConfigMap", cm)
    } else if let Some(s) = volume["secret"]["secretName"].as_str() {
        get(m, "Secret", s)
    } else {
        return None;
    };
    for field in ["data", "stringData"] {
        if let Some(v) = source[field][file].as_str() {
            return Some((volume, v.to_string()));
        }
    }
    None
}

#[test]
fn kubernetes_manifests_match_the_config_they_mount() {
    let m = manifests();
    let deploy = get(&m, "Deployment", "pgveil");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deploy["spec"]["template"]["spec"];
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in deploy["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "selector does not match the pods"
        );
    }
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The config the container serves is the ConfigMap's pgveil.yaml.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["serve", "--config"]);
    let config_path = args[2];
    let (_, config_text) = provided_by(&m, pod, c, config_path)
        .unwrap_or_else(|| panic!("no volume provides {config_path}"));

    // Every ${VAR} of the config is set by the container.
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    for var in config_text
        .split("${")
        .skip(1)
        .map(|r| r.split(['}', ':']).next().unwrap())
    {
        let e = env.get(var).unwrap_or_else(|| {
            panic!("the config uses ${{{var}}}, which the container does not set")
        });
        if let Some(r) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            let secret = get(&m, "Secret", r[&Value::from("name")].as_str().unwrap());
            let key = r[&Value::from("key")].as_str().unwrap();
            assert!(
                secret["stringData"][key].is_string() || secret["data"][key].is_string(),
                "secret has no key {key}"
            );
        }
        // SAFETY: only this test binary's one test sets variables.
        unsafe { std::env::set_var(var, "placeholder.example") };
    }
    let cfg = pgveil::config::Config::from_text(Path::new(config_path), &config_text)
        .unwrap_or_else(|e| panic!("{config_path}: {e}"));

    // Ports and probes.
    let listen = port_of(cfg.listen.as_str());
    let metrics = port_of(
        cfg.metrics
            .as_ref()
            .expect("metrics.listen")
            .listen
            .as_str(),
    );
    let names: Vec<u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(names, [listen, metrics]);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"].as_str(), Some(path), "{probe}");
        assert_eq!(container_port(c, &g["port"]), metrics, "{probe} port");
        let timeout = c[probe]["timeoutSeconds"].as_u64().unwrap_or(1);
        if path == "/readyz" {
            assert!(
                timeout > pgveil::health::CHECK_TIMEOUT.as_secs(),
                "readiness timeout {timeout}s is shorter than one check"
            );
        }
    }

    // Every file the config names comes from a volume.
    let policy = cfg.policy_path().unwrap();
    let policy = policy.to_str().unwrap();
    let (_, policy_text) =
        provided_by(&m, pod, c, policy).unwrap_or_else(|| panic!("no volume provides {policy}"));
    let p = pgveil::policy::Policy::from_text(Path::new(policy), &policy_text)
        .unwrap_or_else(|e| panic!("{policy}: {e}"));
    assert!(!p.tables.is_empty());
    let keys = cfg.keys.as_ref().unwrap();
    let mut files: Vec<String> = keys
        .local
        .as_ref()
        .unwrap()
        .master_keys
        .iter()
        .filter_map(|k| k.file.as_ref().map(|f| f.as_str().to_string()))
        .collect();
    files.extend(
        keys.blind_index_key
            .as_ref()
            .and_then(|b| b.file.as_ref())
            .map(|f| f.as_str().to_string()),
    );
    files.extend(
        cfg.client_tls
            .cert_file
            .iter()
            .map(|f| f.as_str().to_string()),
    );
    files.extend(
        cfg.client_tls
            .key_file
            .iter()
            .map(|f| f.as_str().to_string()),
    );
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let (volume, _) =
            provided_by(&m, pod, c, f).unwrap_or_else(|| panic!("no volume provides {f}"));
        assert!(volume["secret"].is_mapping(), "{f} must come from a Secret");
    }
    // The audit log's directory is a writable volume (the root file system
    // is read-only).
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let audit = cfg.resolve(cfg.audit.as_ref().unwrap().path.as_str());
    let audit_dir = audit.parent().unwrap().to_str().unwrap();
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|vm| vm["mountPath"].as_str() == Some(audit_dir))
        .unwrap_or_else(|| panic!("{audit_dir} is not mounted"));
    assert_ne!(mount["readOnly"].as_bool(), Some(true));

    // Draining fits in the grace period.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > cfg.shutdown_timeout.0.as_secs(), "grace {grace}s");

    // The Service reaches both ports of the pods.
    let svc = get(&m, "Service", "pgveil");
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &labels[k.as_str().unwrap()],
            v,
            "Service selects other pods"
        );
    }
    let targets: Vec<u64> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| container_port(c, &p["targetPort"]))
        .collect();
    assert_eq!(targets, [listen, metrics]);
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(metrics.to_string().as_str())
    );
}
