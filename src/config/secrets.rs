//! Password files of database checks, read when a configuration is loaded (start, `--check`,
//! every reload), so a missing or empty file is an error on its `check` line before anything
//! runs, and probes never touch the disk. The first line is the secret; its line ending is not
//! part of it. For Redis its words are what `AUTH` sends (the password, or a user and a
//! password); for PostgreSQL it is the password, spaces and all.

use super::{CheckKind, Config, ConfigError};

/// Reads every service's password file into its check.
pub(super) fn read(config: &mut Config) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let file = config.path.clone();
    for svc in &mut config.services {
        let (secret, redis) = match &mut svc.check.kind {
            CheckKind::Redis { password: Some(secret), .. } => (secret, true),
            CheckKind::Pgsql { password: Some(secret), .. } => (secret, false),
            _ => continue,
        };
        match first_line(&secret.path) {
            Ok(line) => secret.value = line,
            Err(message) => errors.push(ConfigError { file: file.clone(), line: svc.check.line, message }),
        }
        if redis && secret.value.split_whitespace().count() > 2 {
            let message = format!(
                "check: password file {}: one word (the password) or two (user and password) on its first line",
                secret.path.display()
            );
            errors.push(ConfigError { file: file.clone(), line: svc.check.line, message });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn first_line(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("check: password file {}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("check: password file {}: not UTF-8 text", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.trim().is_empty() {
        return Err(format!("check: password file {}: its first line is empty", path.display()));
    }
    Ok(line)
}
