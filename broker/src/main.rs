//! `tributary`: load the config, install logging and metrics, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tributary::config::{
    Config, ConfigError, ConfigSource, ENV_PREFIX, ENV_SEPARATOR, NO_ROUTES_WARNING,
};

/// jemalloc gives freed memory back to the system on its own (its background
/// threads purge pages left unused for ~10 s), so memory taken by a burst of
/// connections or stored sessions returns once they are gone; glibc's malloc
/// keeps most of it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An MQTT broker with a Kafka bridge built in.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: conf/tributary.toml if present, else
    /// built-in defaults. TRIBUTARY__SECTION__KEY environment variables override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, report every problem, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Add or change a user in a password file (Mosquitto's format, the
    /// `$7$` PBKDF2-SHA512 form), or delete one. The password is asked for
    /// twice on a terminal, or read as one line from standard input.
    Passwd {
        /// Remove the user instead.
        #[arg(long, short = 'D')]
        delete: bool,
        /// The password file; created (mode 0600) if missing.
        file: PathBuf,
        /// The user name.
        user: String,
    },
    /// Ask a running Tributary's `/readyz`: exit 0 when it answers 200,
    /// 1 otherwise, with the reason on stderr (for container health checks).
    Healthcheck {
        /// Where to ask, e.g. http://127.0.0.1:9464/readyz. Default: the
        /// configuration's http.listen (0.0.0.0 and [::] asked on loopback).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let source = ConfigSource::resolve(args.config.as_deref());
    match args.command {
        Some(Command::Passwd { delete, file, user }) => return passwd(&file, &user, delete),
        Some(Command::Healthcheck { url }) => return healthcheck(url.as_deref(), &source),
        None => {}
    }
    let config = match Config::load(&source) {
        Ok(config) => config,
        Err(ConfigError::Invalid(problems)) => {
            eprintln!(
                "invalid configuration ({}): checked {source}{}",
                count(problems.len(), "problem"),
                environment_overrides(),
            );
            for problem in problems.iter() {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        if config.routes.is_empty() {
            eprintln!("warning: {NO_ROUTES_WARNING}");
        }
        println!(
            "configuration is valid ({}): checked {source}{}",
            count(config.routes.len(), "route"),
            environment_overrides(),
        );
        return ExitCode::SUCCESS;
    }
    tributary::telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tributary::run_until_signal(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// "1 route", "2 routes".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Names the environment overrides that were applied too, since they can change
/// what the file says.
fn environment_overrides() -> String {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    if names.is_empty() {
        return String::new();
    }
    names.sort();
    format!(" with environment overrides {}", names.join(", "))
}

/// `tributary healthcheck`. Exits 0 or 1 only: container engines reserve
/// other codes (Docker: 2).
fn healthcheck(url: Option<&str>, source: &ConfigSource) -> ExitCode {
    use tributary::healthcheck::{check, Target, DEFAULT_TIMEOUT};
    let target = match url {
        Some(url) => Target::parse(url).map_err(|failure| failure.to_string()),
        None => Config::load(source)
            .map_err(|_| format!("invalid configuration: check it with --check-config ({source})"))
            .and_then(|config| config.http_addr().map_err(|error| error.to_string()))
            .map(Target::readiness_of),
    };
    match target.and_then(|target| check(&target, DEFAULT_TIMEOUT).map_err(|f| f.to_string())) {
        Ok(reason) => {
            println!("{reason}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("not healthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// `tributary passwd`: never echoes, logs or prints the password.
fn passwd(file: &std::path::Path, user: &str, delete: bool) -> ExitCode {
    use tributary::auth::password;
    if delete {
        return match password::delete_from_file(file, user) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("{}: no user {user:?}", file.display());
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                ExitCode::FAILURE
            }
        };
    }
    let secret = match read_new_password() {
        Ok(secret) => secret,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match password::update_file(file, user, secret.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}: {error}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// Twice from the terminal, or one line from standard input when it is not
/// one (scripts, `echo secret | tributary passwd FILE USER`).
fn read_new_password() -> Result<String, String> {
    use std::io::IsTerminal as _;
    let secret = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Reenter password: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if secret.is_empty() {
        return Err("an empty password is not allowed".into());
    }
    Ok(secret)
}
