//! Password files of database checks, read when a configuration is loaded (start, `--check`,
//! every reload), so a missing or empty file is an error on its `check` line before anything
//! runs, and probes never touch the disk. The first line is the secret; its line ending is not
//! part of it. Its words are what the check sends (for Redis: the password, or a user and a
//! password).

use super::{CheckKind, Config, ConfigError};

/// Reads every service's password file into its check.
pub(super) fn read(config: &mut Config) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let file = config.path.clone();
    for svc in &mut config.services {
        let CheckKind::Redis { password: Some(secret), .. } = &mut svc.check.kind else { continue };
        match first_line(&secret.path) {
            Ok(line) => secret.words = line.split_whitespace().map(str::to_string).collect(),
            Err(message) => errors.push(ConfigError { file: file.clone(), line: svc.check.line, message }),
        }
        if secret.words.len() > 2 && errors.is_empty() {
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
