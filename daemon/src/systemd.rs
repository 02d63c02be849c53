//! systemd integration and the process's signals: `READY=1` once a subnet
//! serves, `RELOADING=1`/`READY=1` around a SIGHUP config reload,
//! `WATCHDOG=1` while the adaptation loop is alive, `STOPPING=1` on
//! SIGTERM/SIGINT. Outside systemd the notifications are no-ops.

use std::path::PathBuf;
use std::sync::Arc;

use sd_notify::NotifyState;

use crate::config::{Config, ConfigSource};
use crate::shared::Shared;

/// `READY=1` once a subnet serves (at once after a restart with a stored
/// bundle); until then `STATUS=` says what it waits for.
pub async fn notify_ready(shared: Arc<Shared>, bundle_dir: PathBuf) {
    if shared.current().is_none() {
        let status = format!(
            "listening; waiting for a bundle in {}",
            bundle_dir.display()
        );
        let _ = sd_notify::notify(false, &[NotifyState::Status(&status)]);
        while shared.current().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let status = shared
        .current()
        .map(|a| format!("serving {}", a.label()))
        .unwrap_or_default();
    match sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]) {
        Ok(()) => log::info!("ready: {status}"),
        Err(e) => log::debug!("sd_notify: {e}"),
    }
}

/// SIGHUP: `RELOADING=1` with `MONOTONIC_USEC`, re-read the config from
/// `source`, put the reloadable keys in force ([`Config::reload`]), then
/// `READY=1`. A bad new config is logged and the old one stays. Without a
/// source (`--demo`) there is nothing to re-read.
pub async fn reload_on_sighup(
    source: Option<ConfigSource>,
    mut current: Config,
    shared: Arc<Shared>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot handle SIGHUP ({e}); config reloads are off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(m) = NotifyState::monotonic_usec_now() {
            states.push(m);
        }
        let _ = sd_notify::notify(false, &states);
        let Some(src) = &source else {
            log::info!("SIGHUP: --demo has no config file to re-read");
            let _ = sd_notify::notify(false, &[NotifyState::Ready]);
            continue;
        };
        log::info!("SIGHUP: re-reading the config");
        let status = match src.load() {
            Ok(next) => {
                let reload = current.reload(next);
                if !reload.needs_restart.is_empty() {
                    log::warn!(
                        "SIGHUP: {} changed; that takes a restart (kept as before)",
                        reload.needs_restart.join(", ")
                    );
                }
                let what = reload.summary();
                current = reload.config;
                shared.adapt.set_config(Arc::new(current.clone()));
                shared.adapt.reloaded(&what);
                what
            }
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                shared.adapt.reload_failed(&msg);
                format!("config reload failed (old config kept): {msg}")
            }
        };
        let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// `WATCHDOG=1` every half `WATCHDOG_USEC` while the adaptation loop is
/// alive (its heartbeat is recent); a wedged loop lets systemd restart us.
pub async fn watchdog(shared: Arc<Shared>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = std::time::Duration::from_micros(usec / 2);
    log::info!(
        "systemd watchdog on: pinging every {:.1} s",
        period.as_secs_f64()
    );
    loop {
        let beat = shared
            .adapt
            .heartbeat_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let tick_ms = shared
            .adapt
            .config()
            .map(|c| (c.policy.check_interval_s.min(c.monitor.interval_s) * 1000.0) as u64)
            .unwrap_or(1000);
        let age = crate::clock::unix_ms().saturating_sub(beat);
        if beat == 0 || age <= (3 * tick_ms).max(usec / 1000) + 60_000 {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        } else {
            log::error!("the adaptation loop has not run for {age} ms; not pinging the watchdog");
        }
        tokio::time::sleep(period).await;
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot handle SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}
