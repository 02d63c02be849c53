//! systemd integration and the process's signals: `READY=1` once a subnet
//! serves, `RELOADING=1`/`READY=1` around a SIGHUP config reload,
//! `WATCHDOG=1` while every long-lived thread is alive (bundle watcher,
//! adaptation loop, HTTP runtime: [`crate::liveness`]), `STOPPING=1` on
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

/// `WATCHDOG=1` every half `WATCHDOG_USEC` while every long-lived thread
/// has beaten recently ([`crate::liveness::Liveness::silent`], with
/// `WATCHDOG_USEC` plus `watchdog_grace_s` of grace for a long bundle
/// check or re-timing); one wedged thread lets systemd restart us.
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
        let grace_s = shared.adapt.config().map_or(60.0, |c| c.watchdog_grace_s);
        let grace =
            std::time::Duration::from_micros(usec) + std::time::Duration::from_secs_f64(grace_s);
        let silent = shared.liveness.silent(crate::clock::unix_ms(), grace);
        if silent.is_empty() {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        } else {
            let who: Vec<String> = silent
                .iter()
                .map(|s| format!("the {} thread for {} ms", s.thread, s.silent_ms))
                .collect();
            log::error!("not pinging the watchdog: silent: {}", who.join(", "));
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
