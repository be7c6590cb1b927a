//! Checks of `deploy/`: every manifest parses into its typed Kubernetes object, the
//! DaemonSet runs the agent the way the code expects (capabilities, bpffs, node name,
//! probes on the metrics address, arguments the CLI accepts), the RBAC reads exactly what
//! the Kubernetes source watches and writes only Events, and the kustomization and the
//! Dockerfile refer to what exists. `cargo xtask test` also runs a schema validator
//! (kubernetes-validate) over the same files.

use std::{collections::BTreeSet, path::PathBuf};

use clap::Parser;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde_json::Value;
use xlb::cli::{Cli, Command};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The YAML documents of a deploy file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            if let Some(v) = serde_saphyr::from_str::<Option<Value>>(&current)
                .unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"))
            {
                docs.push(v);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> Vec<T> {
    documents(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).unwrap_or_else(|e| panic!("{file}: {kind}: {e}")))
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let mut all = typed::<T>(file, kind);
    assert_eq!(all.len(), 1, "{file}: expected exactly one {kind}");
    all.remove(0)
}

fn daemonset() -> DaemonSet {
    one("daemonset.yaml", "DaemonSet")
}

fn agent_container(ds: &DaemonSet) -> Container {
    let pod = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

/// The container's args with `$(VAR)` replaced by the container's literal env values,
/// as the kubelet does.
fn expanded_args(c: &Container) -> Vec<String> {
    let env = c.env.clone().unwrap_or_default();
    c.args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut arg| {
            for var in &env {
                if let Some(value) = &var.value {
                    arg = arg.replace(&format!("$({})", var.name), value);
                }
            }
            assert!(
                !arg.contains("$("),
                "argument {arg} refers to an undefined variable"
            );
            arg
        })
        .collect()
}

fn parsed_agent_args(c: &Container) -> xlb::cli::AgentArgs {
    let mut argv = vec!["xlb".to_string()];
    argv.extend(expanded_args(c));
    // NODE_NAME comes from the downward API in the pod (checked below); the CLI reads
    // it from the environment, so the args need not name the node.
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("DaemonSet args {argv:?}: {e}"));
    match cli.command {
        Command::Agent(args) => args,
        other => panic!("the DaemonSet runs {other:?}, not the agent"),
    }
}

#[test]
fn daemonset_runs_the_agent_with_the_kubernetes_source() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(
        pod.host_network,
        Some(true),
        "XDP attaches to the node's interfaces: hostNetwork"
    );
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.service_account_name.as_deref(), Some("xlb-agent"));
    let c = agent_container(&ds);
    let args = parsed_agent_args(&c);
    assert!(args.kubernetes, "--kubernetes");
    assert!(args.manifests.is_none());
    assert!(args.kubeconfig.is_none(), "in-cluster configuration");
    assert!(
        args.interfaces.is_empty(),
        "the agent finds the node's devices itself"
    );
    assert!(!args.no_socket_lb, "pods and host processes reach Services");
    // The socket programs attach to the host's cgroup root, mounted from the host.
    let cgroup = args.cgroup.clone().expect("--cgroup");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| std::path::Path::new(&m.mount_path) == cgroup)
        .expect("--cgroup is a volume mount");
    let volumes = pod.volumes.clone().unwrap_or_default();
    let volume = volumes
        .iter()
        .find(|v| v.name == mount.name)
        .expect("its volume");
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/cgroup"),
        "the host's cgroup hierarchy"
    );
    assert!(
        !args.cleanup_on_exit,
        "pins must outlive the pod for hitless restarts"
    );

    // The node name comes from the downward API.
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME in env");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Selector matches the template.
    let selector = ds
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    let labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "template lacks selector label {k}");
    }
}

#[test]
fn daemonset_has_exactly_the_needed_capabilities_and_the_bpffs() {
    let ds = daemonset();
    let c = agent_container(&ds);
    let sc = c.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "no blanket privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop.unwrap_or_default(), vec!["ALL".to_string()]);
    let added: BTreeSet<String> = caps.add.unwrap_or_default().into_iter().collect();
    let wanted: BTreeSet<String> = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(added, wanted);

    // The pin directory lies on the host's bpffs, mounted into the container.
    let args = parsed_agent_args(&c);
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| args.bpffs.starts_with(&m.mount_path))
        .unwrap_or_else(|| {
            panic!(
                "--bpffs {} is not under a volume mount",
                args.bpffs.display()
            )
        });
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .expect("the bpffs mount's volume");
    let host = volume.host_path.expect("bpffs is a hostPath volume");
    assert_eq!(host.path, "/sys/fs/bpf");
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    assert_ne!(
        mount.read_only,
        Some(true),
        "the agent pins maps: read-write"
    );
}

#[test]
fn probes_hit_the_agent_health_endpoints() {
    let ds = daemonset();
    let c = agent_container(&ds);
    let args = parsed_agent_args(&c);
    // The probes go to the health address when there is one.
    let addr = args.health_addr.unwrap_or(args.metrics_addr);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        // No host: the pod's IP, which is the node's (hostNetwork), so the address must
        // listen there (the unspecified address); else the probe names the address.
        if addr.ip().is_unspecified() {
            assert_eq!(get.host, None, "{path}: probe host");
        } else {
            assert_eq!(
                get.host.as_deref(),
                Some(addr.ip().to_string().as_str()),
                "{path}: probe host"
            );
        }
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
                .ports
                .clone()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .unwrap_or_else(|| panic!("probe port {name} is not declared")),
        };
        assert_eq!(port, i32::from(addr.port()), "{path}: probe port");
    }
}

#[test]
fn rbac_reads_what_the_agent_watches_and_writes_only_events() {
    let sa: ServiceAccount = one("serviceaccount.yaml", "ServiceAccount");
    let ns: Namespace = one("namespace.yaml", "Namespace");
    let role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let binding: ClusterRoleBinding = one("rbac.yaml", "ClusterRoleBinding");
    let ds = daemonset();
    let ns_name = ns.metadata.name.clone().unwrap();
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns_name.as_str()));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns_name.as_str()));
    assert_eq!(
        ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .service_account_name,
        sa.metadata.name
    );

    // Read-only on what the agent watches; create and patch (a repeat's series count)
    // on Events, nothing else.
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.insert((group.clone(), resource, verbs.clone()));
            }
        }
    }
    let read = BTreeSet::from(["get".to_string(), "list".into(), "watch".into()]);
    let write_events = BTreeSet::from(["create".to_string(), "patch".into()]);
    let wanted: BTreeSet<(String, String, BTreeSet<String>)> = [
        ("", "services", &read),
        ("", "nodes", &read),
        ("discovery.k8s.io", "endpointslices", &read),
        ("events.k8s.io", "events", &write_events),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.clone()))
    .collect();
    assert_eq!(granted, wanted);

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns_name.as_str()));
}

#[test]
fn kustomization_lists_every_manifest_and_the_image() {
    let k = &documents("kustomization.yaml")[0];
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization resources vs deploy/*.yaml");
    let image = agent_container(&daemonset()).image.unwrap();
    let name = image.split(':').next().unwrap();
    let images = k["images"].as_array().expect("images");
    assert!(
        images.iter().any(|i| i["name"] == name),
        "kustomization does not set image {name}"
    );
}

#[test]
fn dockerfile_builds_with_the_project_recipe() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    // The build stage installs what the toolchain check wants and builds through xtask.
    for needed in [
        "rustc-web",
        "cargo-web",
        "libstd-rust-web-dev-bpf",
        "llvm-22-dev",
        "cargo xtask build --release",
    ] {
        assert!(text.contains(needed), "Dockerfile lacks {needed}");
    }
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/xlb\"]"));
    // OCI labels, the version the same as the release's.
    assert!(text.contains(&format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("org.opencontainers.image.revision="));
    let ignore = std::fs::read_to_string(deploy_dir().join("../.dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out of the context"
    );
}

/// The bpffs is ensured by a privileged init container running `xlb mount-bpffs` with
/// Bidirectional propagation (the agent sees the mount through HostToContainer), and the
/// DaemonSet follows the conventions operators expect of a node agent.
#[test]
fn an_init_container_mounts_the_bpffs_and_the_daemonset_follows_node_agent_conventions() {
    let ds = daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let agent = agent_container(&ds);
    let inits = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(inits.len(), 1, "one init container");
    let init = &inits[0];
    let mut argv = vec!["xlb".to_string()];
    argv.extend(expanded_args(init));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("init args {argv:?}: {e}"));
    let Command::MountBpffs(m) = cli.command else {
        panic!("the init container runs {:?}", cli.command);
    };
    assert_eq!(m.path, PathBuf::from("/sys/fs/bpf"));
    assert_eq!(
        init.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "mounting with Bidirectional propagation needs a privileged container"
    );
    let propagation = |c: &Container| {
        c.volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.mount_path == "/sys/fs/bpf")
            .and_then(|v| v.mount_propagation)
    };
    assert_eq!(propagation(init).as_deref(), Some("Bidirectional"));
    assert_eq!(propagation(&agent).as_deref(), Some("HostToContainer"));
    let bpffs = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "bpffs")
        .and_then(|v| v.host_path)
        .expect("the bpffs hostPath");
    assert_eq!(bpffs.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_eq!(
        init.image, agent.image,
        "the init container is the agent's image"
    );

    // Conventions.
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
    assert!(agent.startup_probe.is_some(), "a startup probe");
    for c in [&agent, init] {
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
    }
    let image = agent.image.clone().unwrap();
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        !tag.is_empty() && tag != "latest",
        "a versioned image tag, not {image}"
    );
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "the tag is the release's version"
    );
    let k = &documents("kustomization.yaml")[0];
    assert_eq!(k["images"][0]["newTag"], tag);
    assert_eq!(
        agent
            .security_context
            .as_ref()
            .and_then(|s| s.se_linux_options.as_ref())
            .and_then(|o| o.type_.as_deref()),
        Some("spc_t")
    );
}

/// The uninstall DaemonSet runs `xlb cleanup` on the agent's pin directory, on every
/// node.
#[test]
fn the_uninstall_daemonset_cleans_up_the_agents_pins_on_every_node() {
    let agent = parsed_agent_args(&agent_container(&daemonset()));
    let ds: DaemonSet = one("uninstall/cleanup.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "every node, tainted ones too"
    );
    let init = &pod.init_containers.unwrap_or_default()[0];
    let mut argv = vec!["xlb".to_string()];
    argv.extend(expanded_args(init));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("cleanup args {argv:?}: {e}"));
    let Command::Cleanup(c) = cli.command else {
        panic!("the cleanup runs {:?}", cli.command);
    };
    assert_eq!(c.bpffs, agent.bpffs, "the agent's pin directory");
    let mounts = init.volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| c.bpffs.starts_with(&m.mount_path)));
}
