//! The `realtime-hub` binary: parse settings, set up logging, then serve until SIGTERM/SIGINT,
//! or run a subcommand (`token`, `demo-events`).

use std::process::ExitCode;

use realtime_hub::auth::{mint_hs256, MintClaims};
use realtime_hub::config::{Cli, Command, Config, Invocation, TokenArgs};

fn main() -> ExitCode {
    match Cli::invocation() {
        Invocation::Run(Command::Token(args)) => token(args),
        Invocation::Run(Command::DemoEvents(args)) => realtime_hub::demo_events::run(args),
        Invocation::Serve(args) => match args.into_config() {
            Ok(config) => serve(config),
            Err(e) => {
                eprintln!("realtime-hub: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let Some(secret) = args.secret.filter(|s| !s.is_empty()) else {
        eprintln!("realtime-hub token: no secret: pass --secret or set HUB_JWT_SECRET");
        return ExitCode::from(2);
    };
    let claims = MintClaims::new(&args.user, args.ttl, args.channels, args.publish);
    match mint_hs256(&claims, secret.as_bytes()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("realtime-hub token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    realtime_hub::logging::init(config.log_format, &config.node_id);
    // Every connection is a file descriptor: take the hard limit the system grants, as a
    // container's soft limit (often 1024) would cap the node near a thousand connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit = limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let listener = match realtime_hub::bind(config.bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("realtime-hub: cannot listen on {}: {e}", config.bind);
            return ExitCode::FAILURE;
        }
    };
    let system = actix_web::rt::System::new();
    // Listen for signals before announcing anything: a SIGTERM during the start must drain the
    // node, not kill it by the default action.
    let shutdown = {
        let _runtime = system.runtime().tokio_runtime().enter();
        realtime_hub::shutdown::signal()
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.bind.to_string(), |a| a.to_string());
    if config.dev_mode {
        // Printed, not logged: the key must not end up in log collection.
        // A key the operator set is theirs and not repeated; a generated one is shown once.
        let (key, key_arg) = if config.api_key_generated {
            let key = config.api_key.clone().unwrap_or_default();
            (key.clone(), format!("'X-API-Key: {key}'"))
        } else {
            (
                "(HUB_API_KEY, as configured)".to_owned(),
                "\"X-API-Key: $HUB_API_KEY\"".to_owned(),
            )
        };
        println!(
            "\n  realtime-hub is in DEVELOPMENT MODE: tokens are signed with a random secret that changes\n  \
             at every start, and anyone can get one from POST /dev/token. Set HUB_JWT_SECRET (or\n  \
             HUB_JWT_PUBLIC_KEY) and HUB_API_KEY for production.\n\n  \
             Demo page:  http://{addr}/\n  \
             API key:    {key}\n  \
             Try:        curl -H {key_arg} -d '{{\"channel\":\"chat:lobby\",\"data\":{{\"text\":\"hi\"}}}}' http://{addr}/api/publish\n"
        );
        tracing::warn!(
            "development mode: random JWT secret, /dev/token enabled; do not expose this node"
        );
    }
    match system.block_on(realtime_hub::run(config, listener, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime-hub: {e}");
            ExitCode::FAILURE
        }
    }
}
