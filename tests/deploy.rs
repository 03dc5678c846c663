//! The deployment files (`Dockerfile`, everything under `deploy/`, and `docs/operations.md`)
//! against the real binary: every `HUB_*` name they use is a setting the hub knows, the drain
//! fits in the time the orchestrators give it, the image exposes the port the hub listens on, and
//! the image's health check works against a running hub.
//!
//! No container engine runs here, so the files are read as plain text: no YAML or Dockerfile
//! parser, only the few shapes these files use (`NAME=value`, `NAME: value`, and Kubernetes'
//! `- name: NAME` followed by `value: ...`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under `deploy/`, then the `Dockerfile` and `docs/operations.md`.
fn deployment_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("dir entry").path()).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    files.push(root().join("Dockerfile"));
    files.push(root().join("docs/operations.md"));
    files
}

/// Every `HUB_[A-Z0-9_]+` word in `text` (`HUB_*` and `HUB_<NAME>` are not names).
fn hub_names(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (pos, _) in text.match_indices("HUB_") {
        if text[..pos].chars().next_back().is_some_and(is_word) {
            continue;
        }
        let rest = &text[pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..len].trim_end_matches('_');
        if name.len() > "HUB".len() {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The binary's help text: the serving settings and the `token` subcommand's.
fn help_text() -> String {
    let mut text = String::new();
    for args in [&["--help"][..], &["token", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
            .args(args)
            // Set values would be printed too ([env: HUB_BIND=...]); they are not wanted here.
            .env_clear()
            .output()
            .expect("run realtime-hub --help");
        assert!(out.status.success(), "realtime-hub {args:?} failed");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text
}

/// The settings the binary knows: clap prints `[env: HUB_NAME=]` (or `[env: HUB_NAME]` where
/// values are hidden) for every argument with an environment variable, unless the argument
/// itself is hidden, which none is today.
fn known_settings(help: &str) -> BTreeSet<String> {
    help.split("[env:")
        .skip(1)
        .flat_map(|after| hub_names(after.split(']').next().unwrap_or_default()))
        .collect()
}

/// The `[default: ...]` clap prints for the setting `name`.
fn help_default(help: &str, name: &str) -> Option<String> {
    let line = help
        .lines()
        .find(|l| l.contains(&format!("[env: {name}")))?;
    let after = line.split("[default: ").nth(1)?;
    Some(after.split(']').next()?.to_owned())
}

fn unquote(value: &str) -> String {
    let value = value.split(" #").next().unwrap_or_default().trim();
    value.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

/// The values `text` gives the setting `name`: `NAME=value` (Dockerfile `ENV`), `NAME: value`
/// (compose), or `- name: NAME` then `value: ...` on the next line (Kubernetes). Comment lines
/// give none.
fn setting_values(text: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut values = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        if let Some(named) = line.strip_prefix("- name:") {
            if unquote(named) == name {
                let next = lines.get(i + 1).map(|l| l.trim_start());
                if let Some(value) = next.and_then(|l| l.strip_prefix("value:")) {
                    values.push(unquote(value));
                }
            }
            continue;
        }
        for (pos, _) in line.match_indices(name) {
            let before = line[..pos].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '{') {
                continue;
            }
            let after = &line[pos + name.len()..];
            if let Some(value) = after.strip_prefix('=') {
                values.push(unquote(value.split_whitespace().next().unwrap_or_default()));
            } else if let Some(value) = after.strip_prefix(": ") {
                values.push(unquote(value));
            }
        }
    }
    values
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(&root().join("Dockerfile")).lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    instructions.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    instructions
}

/// The arguments of every instruction `keyword` (e.g. `EXPOSE`).
fn instruction_args(keyword: &str) -> Vec<String> {
    dockerfile_instructions()
        .into_iter()
        .filter_map(|i| {
            let (word, rest) = i.split_once(char::is_whitespace)?;
            word.eq_ignore_ascii_case(keyword)
                .then(|| rest.trim().to_owned())
        })
        .collect()
}

/// The port of a listen address such as `0.0.0.0:8000` or `[::]:8000`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn seconds(value: &str) -> u64 {
    value
        .trim()
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("not a number of seconds: {value:?}"))
}

/// The drain time a file sets, or the hub's default.
fn shutdown_timeout(text: &str, help: &str) -> u64 {
    let set = setting_values(text, "HUB_SHUTDOWN_TIMEOUT_S");
    let default = help_default(help, "HUB_SHUTDOWN_TIMEOUT_S").expect("default shutdown timeout");
    set.iter()
        .map(|v| seconds(v))
        .max()
        .unwrap_or_else(|| seconds(&default))
}

/// Every `HUB_*` name in the deployment files is a setting the binary knows.
#[test]
fn deployment_files_name_only_settings_the_hub_knows() {
    let help = help_text();
    let known = known_settings(&help);
    for name in [
        "HUB_BIND",
        "HUB_REDIS_URL",
        "HUB_SHUTDOWN_TIMEOUT_S",
        "HUB_JWT_SECRET",
    ] {
        assert!(
            known.contains(name),
            "{name} missing from the settings read off --help ({known:?}): has the help format changed?"
        );
    }
    let config = read(&root().join("src/config.rs"));
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for file in deployment_files() {
        for name in hub_names(&read(&file)) {
            if !known.contains(&name) {
                let hint = if config.contains(&format!("env = \"{name}\"")) {
                    " (declared in src/config.rs but absent from --help: a hidden argument?)"
                } else {
                    ""
                };
                unknown.push(format!("{}: {name}{hint}", file.display()));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "settings the hub does not know:\n{}",
        unknown.join("\n")
    );
    assert!(
        used.contains("HUB_REDIS_URL") && used.contains("HUB_NODE_ID"),
        "the deployment files were not read: found only {used:?}"
    );
}

/// Kubernetes waits for the preStop pause and the whole drain before it kills a pod.
#[test]
fn kubernetes_grace_period_outlasts_the_drain() {
    let help = help_text();
    let text = read(&root().join("deploy/k8s/deployment.yaml"));
    let grace = setting_values(&text, "terminationGracePeriodSeconds");
    assert_eq!(grace.len(), 1, "one terminationGracePeriodSeconds");
    let grace = seconds(&grace[0]);
    // The preStop hook: `command: ["sleep", "N"]`, or Kubernetes' own `sleep: {seconds: N}`.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("preStop:"))
        .expect("a preStop hook");
    let indent = lines[start].len() - lines[start].trim_start().len();
    let pause = lines[start + 1..]
        .iter()
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
        .find_map(|n| n.parse::<u64>().ok())
        .expect("the preStop pause in seconds");
    let drain = shutdown_timeout(&text, &help);
    assert!(
        grace > pause + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pause} s + HUB_SHUTDOWN_TIMEOUT_S {drain} s"
    );
}

/// Docker waits for the whole drain before it kills a compose service.
#[test]
fn compose_stop_grace_period_outlasts_the_drain() {
    let help = help_text();
    let text = read(&root().join("deploy/compose.yaml"));
    let drain = shutdown_timeout(&text, &help);
    let periods = setting_values(&text, "stop_grace_period");
    // Docker's default (10 s) is no longer than the hub's default drain.
    assert!(
        !periods.is_empty(),
        "compose.yaml sets no stop_grace_period"
    );
    for period in periods {
        assert!(
            seconds(&period) > drain,
            "stop_grace_period {period} must exceed HUB_SHUTDOWN_TIMEOUT_S {drain} s"
        );
    }
}

/// The image sets the listen address (development mode would listen on loopback only), exposes
/// its port, and the deployment files reach the hub on that port.
#[test]
fn the_image_exposes_the_port_the_hub_listens_on() {
    let exposed: BTreeSet<u16> = instruction_args("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert!(!exposed.is_empty(), "the Dockerfile EXPOSEs no port");
    let dockerfile = read(&root().join("Dockerfile"));
    assert!(
        !setting_values(&dockerfile, "HUB_BIND").is_empty(),
        "the Dockerfile sets no HUB_BIND"
    );
    let mut ports = Vec::new();
    // The files that configure nodes (the docs may show other addresses as examples).
    for file in deployment_files()
        .into_iter()
        .filter(|f| !f.ends_with("operations.md"))
    {
        for bind in setting_values(&read(&file), "HUB_BIND") {
            ports.push((file.clone(), "HUB_BIND", port_of(&bind)));
        }
    }
    let hub_pods = root().join("deploy/k8s/deployment.yaml");
    for port in setting_values(&read(&hub_pods), "containerPort") {
        let port = port.parse().expect("containerPort");
        ports.push((hub_pods.clone(), "containerPort", port));
    }
    let nginx = read(&root().join("deploy/nginx.conf"));
    for line in nginx.lines().map(str::trim) {
        if let Some(server) = line.strip_prefix("server hub-") {
            let addr = server.split_whitespace().next().unwrap_or_default();
            let addr = addr.trim_end_matches(';');
            ports.push((root().join("deploy/nginx.conf"), "upstream", port_of(addr)));
        }
    }
    assert!(ports.len() >= 3, "found too few ports: {ports:?}");
    for (file, what, port) in ports {
        assert!(
            exposed.contains(&port),
            "{}: {what} uses port {port}, the Dockerfile EXPOSEs {exposed:?}",
            file.display()
        );
    }
}

/// The image runs as a non-root user, stops with SIGTERM, and its HEALTHCHECK is valid exec
/// form that asks /health.
#[test]
fn the_image_runs_unprivileged_and_checks_health() {
    let user = instruction_args("USER").pop().expect("a USER instruction");
    let user = user.split(':').next().unwrap_or_default();
    assert!(user != "root" && user != "0", "the image runs as root");
    assert_eq!(instruction_args("STOPSIGNAL"), ["SIGTERM"]);
    let check = health_check();
    assert!(check.iter().any(|a| a.contains("/health")), "{check:?}");
}

/// The exec-form command of the Dockerfile's HEALTHCHECK. (Invalid JSON there would silently
/// turn into a shell command that always fails.)
fn health_check() -> Vec<String> {
    let check = instruction_args("HEALTHCHECK")
        .pop()
        .expect("a HEALTHCHECK");
    let json = check
        .split_once("CMD ")
        .map(|(_, cmd)| cmd.trim())
        .expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not JSON: {e}"))
}

/// Runs the health check as the container would, with the node's HUB_BIND.
fn run_health_check(bind: &str) -> bool {
    let check = health_check();
    Command::new(&check[0])
        .args(&check[1..])
        .env_clear()
        .env("HUB_BIND", bind)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the health check")
        .success()
}

/// The HEALTHCHECK command passes against a running hub and fails once it is gone.
#[test]
fn the_health_check_passes_only_while_the_hub_serves() {
    // The hub binds port 0 and says where: no port is picked in advance.
    let mut hub = common::HubProcess::start(&[("HUB_JWT_SECRET", "deploy-test-secret")]);
    let bind = hub.addr.to_string();
    // As Docker's start period: retry until it passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut healthy = false;
    while !healthy && Instant::now() < deadline {
        healthy = run_health_check(&bind);
        if !healthy {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    hub.kill();
    assert!(
        healthy,
        "the health check never passed against a running hub"
    );
    assert!(!run_health_check(&bind), "healthy after the hub was killed");
}

/// Every path the Dockerfile copies from the build context exists and is not excluded by
/// `.dockerignore` (read simply: literal paths and `*.ext` patterns).
#[test]
fn the_build_context_holds_what_the_dockerfile_copies() {
    let ignore = read(&root().join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let sources: Vec<String> = instruction_args("COPY")
        .into_iter()
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let mut parts: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
            parts.pop(); // the destination
            parts
        })
        .collect();
    assert!(sources.iter().any(|s| s == "src"), "COPY src: {sources:?}");
    for source in sources {
        assert!(root().join(&source).exists(), "COPY {source}: no such path");
        for pattern in &patterns {
            let pattern = pattern.trim_start_matches("**/");
            let excluded = match pattern.strip_prefix('*') {
                Some(suffix) => source.ends_with(suffix),
                None => source == pattern || source.starts_with(&format!("{pattern}/")),
            };
            assert!(
                !excluded,
                ".dockerignore pattern {pattern} excludes COPY {source}"
            );
        }
    }
}

/// Compose has no fallback for the JWT secret or the API key (a default in a public file is a
/// secret anyone can read): it refuses to start until both are set. Kubernetes takes both from
/// the Secret, never from a literal value.
#[test]
fn no_deployment_file_falls_back_to_a_known_secret() {
    let compose = read(&root().join("deploy/compose.yaml"));
    let deployment = read(&root().join("deploy/k8s/deployment.yaml"));
    for name in ["HUB_JWT_SECRET", "HUB_API_KEY"] {
        let values = setting_values(&compose, name);
        assert!(!values.is_empty(), "compose.yaml does not set {name}");
        for value in values {
            assert!(
                value.starts_with(&format!("${{{name}:?")) && !value.contains(":-"),
                "compose.yaml must require {name} (${{{name}:?...}}), not default it: {value}"
            );
        }
        assert_eq!(
            setting_values(&deployment, name),
            Vec::<String>::new(),
            "deployment.yaml must take {name} from the Secret"
        );
    }
}

/// nginx logs no query string (where browsers carry their token): its access log format names
/// neither the request line nor the arguments, and its error log, which appends the full request
/// line to anything it reports about a request, is at `emerg` everywhere.
#[test]
fn nginx_logs_no_query_string() {
    let conf: String = read(&root().join("deploy/nginx.conf"))
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let statements: Vec<&str> = conf.split(['{', '}', ';']).map(str::trim).collect();
    let formats: Vec<&str> = statements
        .iter()
        .copied()
        .filter(|s| s.starts_with("log_format"))
        .collect();
    assert!(
        !formats.is_empty(),
        "no log_format: the default one logs $request"
    );
    for format in &formats {
        for word in format.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$')) {
            assert!(
                !matches!(
                    word,
                    "$request" | "$request_uri" | "$args" | "$query_string" | "$request_body"
                ) && !word.starts_with("$arg_"),
                "log_format logs {word}: {format}"
            );
        }
    }
    for access in statements.iter().filter(|s| s.starts_with("access_log")) {
        let named = access.split_whitespace().nth(2);
        assert!(
            *access == "access_log off"
                || named.is_some_and(|n| formats
                    .iter()
                    .any(|f| f.split_whitespace().nth(1) == Some(n))),
            "an access log without one of these formats: {access}"
        );
    }
    let error_logs: Vec<&str> = statements
        .iter()
        .copied()
        .filter(|s| s.starts_with("error_log"))
        .collect();
    assert!(
        !error_logs.is_empty(),
        "no error_log: nginx's default logs requests at `error`"
    );
    for error_log in error_logs {
        assert_eq!(
            error_log.split_whitespace().nth(2),
            Some("emerg"),
            "{error_log}"
        );
    }
}

/// The compose demo (the demo page through nginx) has the nodes publish their figures for the
/// page's dashboard, which is off by default outside development mode.
#[test]
fn the_compose_demo_feeds_the_dashboard() {
    let compose = read(&root().join("deploy/compose.yaml"));
    let intervals = setting_values(&compose, "HUB_DASHBOARD_INTERVAL_S");
    assert!(
        !intervals.is_empty() && intervals.iter().all(|v| seconds(v) > 0),
        "HUB_DASHBOARD_INTERVAL_S in compose.yaml: {intervals:?}"
    );
}
