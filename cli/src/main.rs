//! `readyws`: the command-line entry point. `readyws serve` runs the reference server.

mod check;
mod connect;
mod demo;
mod instances;
mod publish;
mod relay;
mod static_files;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use readyws_protocol::ServerConfig;
use readyws_server::{
    AcceptAll, Deadlines, Echo, InboundHandler, InsecureDevAuth, JwksFetch, Jwt, MailboxLimits,
    OverflowPolicy, RedisStore, Server, ServerLimits, ServerOptions,
};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "readyws",
    version,
    about = "readyws: WebSocket messages that wait until the connection is ready"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The problem and its fix in one command: an embedded server with a cold start, a relay
    /// that cuts and stalls connections, and messages both ways; exits non-zero if any message
    /// was lost, duplicated or reordered.
    Demo(demo::DemoArgs),
    /// Run the reference server: WebSocket endpoint at /ws, publish API at POST /api/publish,
    /// and /healthz, /readyz, /metrics on the same port (or the last two on --admin-listen).
    /// Every flag can also be set by the environment variable shown with it.
    Serve(Box<ServeArgs>),
    /// A client for terminals and scripts: stdin lines become messages, received messages are
    /// printed on stdout as JSON lines; exits non-zero if a message sent was not acknowledged.
    Connect(connect::ConnectArgs),
    /// Publishes one message to a user through a server's publish API.
    Publish(publish::PublishArgs),
    /// Checks a server that claims readyws v1 against the specification, rule by rule; exits
    /// non-zero if any rule fails.
    Check(check::CheckArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "READYWS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Verify hello tokens as HS256 JWTs signed with this secret (`sub` is the user id).
    #[arg(
        long,
        env = "READYWS_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "insecure_dev_auth"
    )]
    jwt_secret: Option<String>,
    /// Verify hello tokens as RS256 (RSA) or ES256 (P-256) JWTs with the public key in this PEM
    /// file; the key's kind chooses the algorithm.
    #[arg(long, value_name = "PEM", env = "READYWS_JWT_PUBLIC_KEY", conflicts_with_all = ["insecure_dev_auth", "jwt_secret"])]
    jwt_public_key: Option<std::path::PathBuf>,
    /// Verify hello tokens as RS256 or ES256 JWTs with the keys of a JWKS document: a file, or
    /// an https:// URL fetched again every 5 minutes and when a token names an unknown key.
    #[arg(long, value_name = "FILE|URL", env = "READYWS_JWT_JWKS", conflicts_with_all = ["insecure_dev_auth", "jwt_secret", "jwt_public_key"])]
    jwt_jwks: Option<String>,
    /// Certificates (PEM) trusted for the JWKS URL besides the Web PKI roots.
    #[arg(
        long,
        env = "READYWS_JWT_JWKS_CA",
        value_name = "PEM",
        requires = "jwt_jwks"
    )]
    jwt_jwks_ca: Option<std::path::PathBuf>,
    /// Accept only JWTs whose `iss` is this.
    #[arg(long, env = "READYWS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Accept only JWTs whose `aud` names one of these (repeat the flag for several).
    #[arg(long, env = "READYWS_JWT_AUDIENCE", value_delimiter = ',')]
    jwt_audience: Vec<String>,
    /// How far clocks may differ when checking `exp` and `nbf`, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "READYWS_JWT_LEEWAY",
        default_value_t = 0
    )]
    jwt_leeway: u64,
    /// INSECURE, development only: the hello token is taken as the user id, unchecked.
    #[arg(long, env = "READYWS_INSECURE_DEV_AUTH")]
    insecure_dev_auth: bool,
    /// Bearer key for POST /api/publish (the API is off without one).
    #[arg(long, env = "READYWS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Simulate a cold start: sockets wait in phase "starting" for this many milliseconds.
    #[arg(
        long,
        env = "READYWS_STARTUP_DELAY",
        value_name = "MS",
        default_value_t = 0,
        alias = "startup-delay-ms"
    )]
    startup_delay: u64,
    /// How long a socket waits for start-up before goaway 4002.
    #[arg(
        long,
        env = "READYWS_STARTUP_MAX_WAIT_MS",
        value_name = "MS",
        default_value_t = 30_000
    )]
    startup_max_wait_ms: u64,
    /// The `retry_after_ms` of that goaway 4002.
    #[arg(
        long,
        env = "READYWS_STARTUP_RETRY_AFTER_MS",
        value_name = "MS",
        default_value_t = 5_000
    )]
    startup_retry_after_ms: u64,
    /// The server's ping interval.
    #[arg(
        long,
        env = "READYWS_HEARTBEAT_MS",
        value_name = "MS",
        default_value_t = 25_000
    )]
    heartbeat_ms: u64,
    /// Publish each accepted client message back to the same user, unchanged.
    #[arg(long, env = "READYWS_ECHO")]
    echo: bool,
    /// The largest frame either side may send.
    #[arg(long, env = "READYWS_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// The most unacknowledged messages in flight per direction.
    #[arg(long, env = "READYWS_MAX_INFLIGHT", default_value_t = 256)]
    max_inflight: u64,
    /// How long a session stays resumable after its connection drops.
    #[arg(
        long,
        env = "READYWS_RESUME_WINDOW_MS",
        value_name = "MS",
        default_value_t = 120_000
    )]
    resume_window_ms: u64,
    /// How long a socket may stay silent before its hello.
    #[arg(
        long,
        env = "READYWS_HELLO_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 10_000
    )]
    hello_timeout_ms: u64,
    /// Messages held per user.
    #[arg(long, env = "READYWS_MAILBOX_MAX_MESSAGES", default_value_t = 1000)]
    mailbox_max_messages: usize,
    /// Bytes held per user.
    #[arg(long, env = "READYWS_MAILBOX_MAX_BYTES", default_value_t = 1 << 20)]
    mailbox_max_bytes: usize,
    /// How long a held message may wait while no session holds it.
    #[arg(
        long,
        env = "READYWS_MAILBOX_TTL_MS",
        value_name = "MS",
        default_value_t = 600_000
    )]
    mailbox_ttl_ms: u64,
    /// What a full mailbox does.
    #[arg(long, env = "READYWS_MAILBOX_OVERFLOW", value_enum, default_value_t = Overflow::Reject)]
    mailbox_overflow: Overflow,
    /// At shutdown, retry_after_ms is spread uniformly over this window.
    #[arg(
        long,
        env = "READYWS_SHUTDOWN_SPREAD_MS",
        value_name = "MS",
        default_value_t = 10_000
    )]
    shutdown_spread_ms: u64,
    /// How long shutdown waits for connections to close.
    #[arg(
        long,
        env = "READYWS_SHUTDOWN_GRACE_MS",
        value_name = "MS",
        default_value_t = 5_000
    )]
    shutdown_grace_ms: u64,
    /// Also serve the files under this folder over HTTP (for example `wasm`, whose
    /// `examples/browser/` page then runs at /examples/browser/).
    #[arg(long = "static", env = "READYWS_STATIC", value_name = "DIR")]
    static_dir: Option<std::path::PathBuf>,
    /// Keep users, sessions and mailboxes in this Redis (`redis://host:port` for one primary,
    /// `redis-cluster://host:port,host:port` for a Redis Cluster), shared with every other
    /// instance started with the same URL: any of them then serves any user. Without it they
    /// live in this process's memory.
    #[arg(long, value_name = "URL", env = "READYWS_REDIS_URL")]
    redis: Option<String>,
    /// The prefix of every Redis key and channel; instances of one deployment share it.
    #[arg(
        long,
        env = "READYWS_REDIS_PREFIX",
        default_value = "readyws",
        requires = "redis"
    )]
    redis_prefix: String,
    /// The most TCP connections open at once, HTTP and WebSocket together; at the bound the
    /// oldest connection still in its request head is closed to make room, or the new one gets
    /// 503. Keep it below the open-file limit (`ulimit -n`).
    #[arg(long, env = "READYWS_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// The most sessions one user has at once, live or kept for resume; past it the oldest
    /// detached one is ended, or the connection gets goaway 4003 when all are live.
    #[arg(long, env = "READYWS_MAX_SESSIONS_PER_USER", default_value_t = 16)]
    max_sessions_per_user: usize,
    /// The most bytes of message data held for all users together; a publish past it gets 503.
    #[arg(long, env = "READYWS_MAX_HELD_BYTES", default_value_t = 256 << 20)]
    max_held_bytes: usize,
    /// The longest user id, in bytes (goaway 4200 for a connection, 400 for a publish).
    #[arg(long, env = "READYWS_MAX_USER_ID_BYTES", default_value_t = 256)]
    max_user_id_bytes: usize,
    /// How long a connection may take to send its complete request head (and a kept-alive HTTP
    /// connection its next one, and a publish its body).
    #[arg(
        long,
        value_name = "MS",
        env = "READYWS_REQUEST_HEAD_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    request_head_timeout_ms: u64,
    /// How long a write to a WebSocket may stay blocked (a client that stopped reading) before
    /// the connection is dropped. Default: twice --heartbeat-ms.
    #[arg(long, value_name = "MS", env = "READYWS_WRITE_TIMEOUT_MS")]
    write_timeout_ms: Option<u64>,
    /// Log level: error, warn, info, debug or trace. `RUST_LOG`, when set, takes precedence
    /// (for example `RUST_LOG=readyws_server=debug,info`).
    #[arg(long, env = "READYWS_LOG", default_value = "info")]
    log: tracing::Level,
    /// How log lines are written on stderr: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(long, env = "READYWS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve POST /api/publish and /metrics on this address only, instead of on --listen, which
    /// then carries /ws (and /healthz, /readyz, which both answer): operators keep the internal
    /// routes off the public port.
    #[arg(long, env = "READYWS_ADMIN_LISTEN", value_name = "ADDRESS")]
    admin_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Overflow {
    /// Refuse new messages (HTTP 429).
    Reject,
    /// Drop the oldest held messages.
    DropOldest,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(problem) => {
            eprintln!("readyws: cannot start the async runtime: {problem}");
            return ExitCode::FAILURE;
        }
    };
    // `Ok(false)`: the command ran and its verdict is negative (a lost message, a failed rule),
    // which exits 1; `Err`: it could not run, which exits 1 too, with the reason on stderr.
    let verdict = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)).map(|()| true),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Connect(args) => runtime.block_on(connect::run(args)),
        Command::Check(args) => runtime.block_on(check::run(args)),
        Command::Publish(args) => runtime.block_on(publish::run(args)),
    };
    match verdict {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("readyws: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => directives
            .parse::<tracing_subscriber::filter::Targets>()
            .map_err(|problem| format!("RUST_LOG={directives:?}: {problem}"))?,
        _ => tracing_subscriber::filter::Targets::new().with_default(args.log),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => subscriber
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
        LogFormat::Json => subscriber.json().finish().with(filter).init(),
    }
    let ms = Duration::from_millis;
    let protocol = ServerConfig::default()
        .heartbeat(ms(args.heartbeat_ms.max(1)))
        .max_frame_bytes(
            args.max_frame_bytes
                .max(readyws_protocol::frame::MIN_MAX_FRAME_BYTES as usize),
        )
        .max_inflight(args.max_inflight)
        .resume_window(ms(args.resume_window_ms))
        .hello_timeout(ms(args.hello_timeout_ms));
    let mailbox = MailboxLimits {
        max_messages: args.mailbox_max_messages.max(1),
        max_bytes: args.mailbox_max_bytes.max(1),
        ttl: ms(args.mailbox_ttl_ms),
        overflow: match args.mailbox_overflow {
            Overflow::Reject => OverflowPolicy::RejectNew,
            Overflow::DropOldest => OverflowPolicy::DropOldest,
        },
    };
    // The process's one metrics recorder, installed here, by the application, before the server
    // registers its series.
    let (recorder, prometheus) = readyws_server::prometheus_recorder();
    if metrics::set_global_recorder(recorder).is_err() {
        warn!("a metrics recorder was installed already; /metrics shows only what this one holds");
    }
    let mut options = ServerOptions::default()
        .prometheus(prometheus)
        .protocol(protocol)
        .mailbox(mailbox)
        .wait_for_startup(args.startup_delay > 0)
        .startup_max_wait(
            ms(args.startup_max_wait_ms),
            ms(args.startup_retry_after_ms),
        )
        .shutdown(ms(args.shutdown_spread_ms), ms(args.shutdown_grace_ms))
        .api_key(args.api_key.clone())
        .limits(
            ServerLimits::default()
                .max_connections(args.max_connections.max(1))
                .max_sessions_per_user(args.max_sessions_per_user.max(1))
                .max_held_bytes(args.max_held_bytes)
                .max_user_id_bytes(args.max_user_id_bytes.max(1)),
        )
        .deadlines(
            Deadlines::default()
                .request_head(ms(args.request_head_timeout_ms.max(1)))
                .write(args.write_timeout_ms.map(|timeout| ms(timeout.max(1)))),
        );
    if let Some(url) = &args.redis {
        let store = RedisStore::connect(url)
            .await
            .map_err(|problem| problem.to_string())?;
        options = options.redis(store.with_prefix(args.redis_prefix.clone()));
    }
    let jwt = jwt_authenticator(&args).await?;
    let server = match (jwt, args.insecure_dev_auth) {
        (Some(jwt), false) => build(options, jwt, args.echo),
        (None, true) => {
            warn!("INSECURE DEVELOPMENT AUTHENTICATION: any token is accepted as the user id; never use this in production");
            build(options, InsecureDevAuth, args.echo)
        }
        _ => return Err("choose an authentication: --jwt-secret SECRET (or READYWS_JWT_SECRET), --jwt-public-key PEM, --jwt-jwks FILE|URL, or --insecure-dev-auth".to_owned()),
    };
    let server = match &args.static_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(format!("--static {}: not a folder", dir.display()));
            }
            info!(folder = %dir.display(), "serving static files");
            server.with_fallback(static_files::router(dir.clone()))
        }
        None => server,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|problem| format!("cannot listen on {}: {problem}", args.listen))?;
    let address = listener
        .local_addr()
        .map_err(|problem| problem.to_string())?;
    info!(%address, echo = args.echo, publish_api = args.api_key.is_some(), "readyws server listening; WebSocket endpoint at /ws");
    let admin = match args.admin_listen {
        Some(admin_address) => {
            let admin = TcpListener::bind(admin_address)
                .await
                .map_err(|problem| format!("cannot listen on {admin_address}: {problem}"))?;
            let bound = admin.local_addr().map_err(|problem| problem.to_string())?;
            info!(address = %bound, "admin listener: /api/publish and /metrics");
            Some(admin)
        }
        None => None,
    };
    if args.startup_delay > 0 {
        let handle = server.handle();
        let delay = ms(args.startup_delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            handle.mark_started();
            info!("start-up complete");
        });
    }
    match admin {
        Some(admin) => {
            server
                .serve_with_admin(listener, admin, shutdown_signal())
                .await
        }
        None => server.serve(listener, shutdown_signal()).await,
    }
    .map_err(|problem| format!("server error: {problem}"))
}

/// The JWT authenticator the flags ask for, if any.
async fn jwt_authenticator(args: &ServeArgs) -> Result<Option<Jwt>, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|problem| format!("cannot read {}: {problem}", path.display()))
    };
    let jwt = if let Some(secret) = &args.jwt_secret {
        Jwt::hs256(secret.as_bytes())
    } else if let Some(path) = &args.jwt_public_key {
        let pem = read(path)?;
        Jwt::rs256_pem(&pem)
            .or_else(|_| Jwt::es256_pem(&pem))
            .map_err(|_| {
                format!(
                    "--jwt-public-key {}: neither an RSA nor a P-256 public key in PEM",
                    path.display()
                )
            })?
    } else if let Some(source) = &args.jwt_jwks {
        if source.starts_with("https://") {
            let mut fetch = JwksFetch::default();
            if let Some(path) = &args.jwt_jwks_ca {
                fetch = fetch.extra_roots_pem(read(path)?);
            }
            Jwt::jwks_url(source, fetch)
                .await
                .map_err(|problem| format!("--jwt-jwks {source}: {problem}"))?
        } else {
            Jwt::jwks_file(source).map_err(|problem| format!("--jwt-jwks {source}: {problem}"))?
        }
    } else {
        return Ok(None);
    };
    let mut jwt = jwt.leeway(Duration::from_secs(args.jwt_leeway));
    if let Some(issuer) = &args.jwt_issuer {
        jwt = jwt.issuer(issuer);
    }
    if !args.jwt_audience.is_empty() {
        let audiences: Vec<&str> = args.jwt_audience.iter().map(String::as_str).collect();
        jwt = jwt.audience(&audiences);
    }
    Ok(Some(jwt))
}

fn build(options: ServerOptions, auth: impl readyws_server::Authenticator, echo: bool) -> Server {
    fn with(
        options: ServerOptions,
        auth: impl readyws_server::Authenticator,
        handler: impl InboundHandler,
    ) -> Server {
        Server::new(options, auth, handler)
    }
    if echo {
        with(options, auth, Echo)
    } else {
        with(options, auth, AcceptAll)
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(problem) = tokio::signal::ctrl_c().await {
            error!(%problem, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(problem) => {
                error!(%problem, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => info!("ctrl-c: shutting down"),
        () = terminate => info!("SIGTERM: shutting down"),
    }
}
