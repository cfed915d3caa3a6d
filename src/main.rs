//! The `shunt` command: parse the command line, load the conf file, start the balancer, turn
//! signals into drains, and map every failure to the exit codes of DESIGN.md
//! (0 clean shutdown, 1 configuration error, 2 runtime failure at start).

use env_logger::{Target, WriteStyle};
use shunt::config::{self, Config};
use shunt::{logsink, notify};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: shunt [-c FILE]          run; FILE defaults to /etc/shunt/shunt.conf
       shunt --check -c FILE    validate FILE and print a summary per service
       shunt --plan -c FILE     what reloading FILE would change in the shunt running with
                                FILE's admin address (changes nothing)
       shunt --version | --help

signals: SIGHUP reloads FILE in place, SIGUSR2 upgrades to the binary now at this one's path,
         SIGTERM/SIGINT drain and exit";

/// The log target of the start-up lines that say where shunt listens.
const STARTUP: &str = "shunt::startup";

enum Mode {
    Run,
    Check,
    Plan,
}

struct Args {
    mode: Mode,
    conf: PathBuf,
}

fn parse_args(mut argv: impl Iterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
    let mut args = Args { mode: Mode::Run, conf: PathBuf::from(config::DEFAULT_PATH) };
    while let Some(arg) = argv.next() {
        match arg.to_str() {
            Some("-c" | "--config") => {
                args.conf = argv.next().ok_or("-c needs a FILE argument")?.into();
            }
            Some("--check") => args.mode = Mode::Check,
            Some("--plan") => args.mode = Mode::Plan,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(None);
            }
            Some("-V" | "--version") => {
                println!("shunt {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            _ => return Err(format!("unknown argument {:?}", arg.to_string_lossy())),
        }
    }
    Ok(Some(args))
}

/// Reads and checks FILE whole: its text, and the certificate and key files its `tls` lines
/// name (so `--check` catches a key that does not match its certificate).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let loaded = config::load(path).and_then(|c| shunt::tls::server_configs(&c).map(|_| c));
    loaded.and_then(|c| shunt::tls::backend_configs(&c).map(|_| c)).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!("shunt: {} error(s) in {}", errors.len(), path.display());
        ExitCode::from(1)
    })
}

/// Sets up `env_logger` to format lines and the log sink to write them (see `logsink`): a
/// stalled stderr then drops log lines instead of stalling the event loops.
fn init_logging(level: log::LevelFilter) -> std::io::Result<()> {
    use std::io::IsTerminal;
    let mut builder = env_logger::Builder::new();
    // The addresses shunt listens on are logged whatever the level (`log warn` included): with
    // port 0 in the conf they are the only place the bound ports show, and scripts wait for them.
    builder.filter_level(level).filter_module(STARTUP, log::LevelFilter::Info).format_timestamp_millis();
    // RUST_LOG, when set, wins over the conf file's `log` directive.
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let style = if std::io::stderr().is_terminal() { WriteStyle::Auto } else { WriteStyle::Never };
    builder.target(Target::Pipe(logsink::start()?)).write_style(style);
    builder.init();
    Ok(())
}

/// `--plan`: the running shunt's configuration (`GET /config`) and live counts (`GET
/// /metrics`) against FILE, printed one change per line.
fn plan(path: &std::path::Path, new: &Config) -> ExitCode {
    let Some(admin) = new.admin else {
        eprintln!("shunt: {} has no admin address: --plan asks the running shunt through it", path.display());
        return ExitCode::from(1);
    };
    let running = shunt::plan::fetch(admin, "/config").and_then(|text| {
        config::parse_bytes(text.as_bytes(), std::path::Path::new("running configuration"))
            .map_err(|errors| format!("the running configuration does not parse: {}", errors[0]))
    });
    let live = shunt::plan::fetch(admin, "/metrics").map(|m| shunt::plan::Scraped::parse(&m));
    match (running, live) {
        (Ok(old), Ok(live)) => {
            let plan = shunt::plan::diff(&old, new, &live);
            print!("{}", plan.to_text());
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("shunt: {e}");
            ExitCode::from(2)
        }
    }
}

/// Takes the hand-over socket an old process named in `SHUNT_UPGRADE_FD` and reads what it
/// handed over.
fn receive(fd: &str) -> Result<shunt::upgrade::Inherited, String> {
    let raw: i32 = fd.parse().map_err(|_| format!("{}={fd:?} is not a descriptor", shunt::upgrade::FD_VAR))?;
    let fd = shunt::inherited_fd(raw).map_err(|e| format!("descriptor {raw}: {e}"))?;
    shunt::upgrade::receive(fd)
}

/// How long the log sink gets to write what is queued before the process exits.
const LOG_FLUSH: Duration = Duration::from_secs(1);

/// A panic anywhere is fatal (release builds abort; see the README's "Failure policy"): the
/// message and backtrace go through the log sink, which gets a moment to write them, so a
/// stalled stderr cannot keep a broken process alive.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let trace = std::backtrace::Backtrace::capture();
        log::error!("fatal: thread {name} panicked: {info}; exiting so a supervisor can restart shunt\n{trace}");
        logsink::flush(LOG_FLUSH);
    }));
}

fn main() -> ExitCode {
    // An upgrade: the old process named the hand-over socket. Read before anything else, and
    // taken out of the environment so the next upgrade does not see it.
    let handed_over = std::env::var(shunt::upgrade::FD_VAR).ok();
    std::env::remove_var(shunt::upgrade::FD_VAR);
    // What an upgrade of this process starts: this executable's path as it is now (the new
    // binary is put there later) and the same arguments.
    let program = std::env::current_exe()
        .ok()
        .map(|exe| shunt::upgrade::Program { exe, args: std::env::args_os().skip(1).collect() });
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("shunt: {msg}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    let mut inherited = match handed_over.map(|fd| receive(&fd)) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(why)) => {
            eprintln!("shunt: upgrade: {why}");
            return ExitCode::from(2);
        }
    };
    let config = match load(&args.conf) {
        Ok(c) => c,
        Err(code) => {
            if let Some(i) = &inherited {
                i.failed("the configuration file has errors (see the new process's output)");
            }
            return code;
        }
    };
    match args.mode {
        Mode::Check => {
            for line in config.summary() {
                println!("{line}");
            }
            println!("{}: configuration ok", args.conf.display());
            return ExitCode::SUCCESS;
        }
        Mode::Plan => return plan(&args.conf, &config),
        Mode::Run => {}
    }
    if let Err(e) = init_logging(config.log_level) {
        eprintln!("shunt: cannot start the log writer thread: {e}");
        return ExitCode::from(2);
    }
    install_panic_hook();
    shunt::raise_fd_limit();

    // Signals are blocked into an iterator before any thread starts, so none is lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shunt: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match shunt::runtime::start_with(config, program, inherited.as_mut()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shunt: {e}");
            if let shunt::StartError::Config(_) = e {
                return ExitCode::from(1);
            }
            if let Some(i) = &inherited {
                i.failed(&e.to_string());
            }
            return ExitCode::from(2);
        }
    };
    if let Some(i) = inherited {
        if let Err(e) = i.ready(std::sync::Arc::clone(&running.supervisor)) {
            log::error!("upgrade: telling the old process this one is ready: {e}");
        }
        log::warn!("upgrade: this process (pid {}) serves now", std::process::id());
    }
    notify::send(&format!("READY=1\nMAINPID={}", std::process::id()));
    for (service, addr) in &running.listening {
        log::info!(target: STARTUP, "service {service} listening on {addr}");
    }
    if let Some(addr) = running.admin_addr {
        log::info!(target: STARTUP, "admin endpoint listening on {addr}");
    }
    let supervisor = std::sync::Arc::clone(&running.supervisor);
    std::thread::Builder::new()
        .name("shunt-signals".into())
        .spawn(move || {
            let mut draining = false;
            for sig in signals.forever() {
                match sig {
                    // The outcome (taken, or every error) is logged by the supervisor.
                    SIGHUP => {
                        let _ = supervisor.reload();
                    }
                    // An upgrade waits for the new process: not on this thread, which must stay
                    // free for a stop signal meanwhile. The outcome is logged by the supervisor.
                    SIGUSR2 => {
                        let supervisor = std::sync::Arc::clone(&supervisor);
                        let _ = std::thread::Builder::new().name("shunt-upgrade".into()).spawn(move || {
                            let _ = supervisor.upgrade();
                        });
                    }
                    _ if draining => {
                        log::warn!("second stop signal: exiting now");
                        logsink::flush(LOG_FLUSH);
                        std::process::exit(0);
                    }
                    _ => {
                        draining = true;
                        notify::send("STOPPING=1");
                        let drain_timeout = supervisor.stats().current().config.drain_timeout;
                        log::info!("stop signal: draining for up to {}s", drain_timeout.as_secs());
                        supervisor.drain(Instant::now() + drain_timeout);
                    }
                }
            }
        })
        .expect("spawning the signal thread at start-up");
    // A worker that fails ends the process (status 2): half a balancer, with one worker's
    // listeners dead and its connection slots never given back, would look alive to a
    // supervisor and to health checks while refusing part of its traffic.
    let code = match running.wait() {
        Ok(()) => {
            log::info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("fatal: {e}; exiting so a supervisor can restart shunt");
            ExitCode::from(2)
        }
    };
    logsink::flush(LOG_FLUSH);
    code
}
