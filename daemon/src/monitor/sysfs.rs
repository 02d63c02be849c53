//! The board's state from `/sys` and `/proc`, read under a configurable root
//! (`monitor.root`, default `/`) so tests can fake a throttled board in a
//! folder: CPU clocks (`sys/devices/system/cpu/cpu*/cpufreq/{scaling_cur_freq,
//! cpuinfo_max_freq}`), online CPUs (`sys/devices/system/cpu/online`), thermal
//! zones (`sys/class/thermal/thermal_zone*/{type,temp}`), pressure stall
//! information (`proc/pressure/{cpu,memory}`) and `proc/loadavg`. Missing
//! files are not errors: the value is simply unknown.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One thermal zone (or hwmon sensor), °C.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Temp {
    pub name: String,
    pub celsius: f64,
}

/// `some avg10` of a pressure file, percent of wall time stalled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub cpu_some_avg10: Option<f64>,
    pub memory_some_avg10: Option<f64>,
    pub memory_full_avg10: Option<f64>,
}

/// What the files under the root say.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Board {
    /// CPUs online (from `online`, else the `cpuN` folders).
    pub online_cpus: Option<usize>,
    /// Mean `scaling_cur_freq / cpuinfo_max_freq` over the online CPUs that
    /// have cpufreq; `None` without cpufreq (e.g. in a VM).
    pub freq_ratio: Option<f64>,
    /// Lowest per-CPU ratio (a single throttled core shows here).
    pub min_freq_ratio: Option<f64>,
    pub temps: Vec<Temp>,
    pub pressure: Pressure,
    /// 1, 5, 15 minute load averages from `proc/loadavg`.
    pub loadavg: Option<[f64; 3]>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_num(p: &Path) -> Option<f64> {
    read_trim(p)?.parse::<f64>().ok()
}

/// Parse a CPU list such as `0-3,5,7-8`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.trim().parse::<usize>().ok()?,
                    b.trim().parse::<usize>().ok()?,
                );
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// `some avg10=1.23 avg60=...` -> (some avg10, full avg10).
pub fn parse_pressure(text: &str) -> (Option<f64>, Option<f64>) {
    let field = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("avg10=")))
            .and_then(|v| v.parse::<f64>().ok())
    };
    (field("some"), field("full"))
}

/// Reads the board's files under `root`.
#[derive(Clone, Debug)]
pub struct SysFs {
    pub root: PathBuf,
}

impl SysFs {
    pub fn new(root: &Path) -> SysFs {
        SysFs {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The CPU numbers online.
    pub fn online(&self) -> Option<Vec<usize>> {
        if let Some(list) = read_trim(&self.path("sys/devices/system/cpu/online")) {
            return parse_cpu_list(&list);
        }
        let mut cpus: Vec<usize> = std::fs::read_dir(self.path("sys/devices/system/cpu"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("cpu")?
                    .parse::<usize>()
                    .ok()
            })
            .collect();
        cpus.sort();
        (!cpus.is_empty()).then_some(cpus)
    }

    /// Per online CPU `cur / max` clock ratios (CPUs without cpufreq skipped).
    pub fn freq_ratios(&self, online: Option<&[usize]>) -> Vec<f64> {
        let base = self.path("sys/devices/system/cpu");
        let cpus: Vec<usize> = match online {
            Some(o) => o.to_vec(),
            None => (0..1024).collect(),
        };
        let mut out = Vec::new();
        for c in cpus {
            let dir = base.join(format!("cpu{c}/cpufreq"));
            if !dir.is_dir() {
                if online.is_none() && !base.join(format!("cpu{c}")).exists() {
                    break;
                }
                continue;
            }
            if let (Some(cur), Some(max)) = (
                read_num(&dir.join("scaling_cur_freq")),
                read_num(&dir.join("cpuinfo_max_freq")),
            ) {
                if max > 0.0 && cur > 0.0 {
                    out.push((cur / max).min(1.0));
                }
            }
        }
        out
    }

    /// Every thermal zone, °C (`temp` is in millidegrees).
    pub fn thermal_zones(&self) -> Vec<Temp> {
        let Ok(entries) = std::fs::read_dir(self.path("sys/class/thermal")) else {
            return Vec::new();
        };
        let mut zones: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                n.starts_with("thermal_zone").then(|| (n, e.path()))
            })
            .collect();
        zones.sort();
        zones
            .into_iter()
            .filter_map(|(n, p)| {
                let milli = read_num(&p.join("temp"))?;
                let kind = read_trim(&p.join("type")).unwrap_or_default();
                Some(Temp {
                    name: if kind.is_empty() {
                        n
                    } else {
                        format!("{n}:{kind}")
                    },
                    celsius: milli / 1000.0,
                })
            })
            .collect()
    }

    pub fn pressure(&self) -> Pressure {
        let cpu = read_trim(&self.path("proc/pressure/cpu")).map(|t| parse_pressure(&t));
        let mem = read_trim(&self.path("proc/pressure/memory")).map(|t| parse_pressure(&t));
        Pressure {
            cpu_some_avg10: cpu.and_then(|c| c.0),
            memory_some_avg10: mem.and_then(|m| m.0),
            memory_full_avg10: mem.and_then(|m| m.1),
        }
    }

    pub fn loadavg(&self) -> Option<[f64; 3]> {
        let t = read_trim(&self.path("proc/loadavg"))?;
        let v: Vec<f64> = t
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 3).then(|| [v[0], v[1], v[2]])
    }

    /// Everything at once.
    pub fn board(&self) -> Board {
        let online = self.online();
        let ratios = self.freq_ratios(online.as_deref());
        let (freq_ratio, min_freq_ratio) = if ratios.is_empty() {
            (None, None)
        } else {
            (
                Some(ratios.iter().sum::<f64>() / ratios.len() as f64),
                ratios.iter().copied().reduce(f64::min),
            )
        };
        Board {
            online_cpus: online.map(|o| o.len()),
            freq_ratio,
            min_freq_ratio,
            temps: self.thermal_zones(),
            pressure: self.pressure(),
            loadavg: self.loadavg(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_pressure_parse() {
        assert_eq!(
            parse_cpu_list("0-3,5,7-8\n"),
            Some(vec![0, 1, 2, 3, 5, 7, 8])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
        let (some, full) = parse_pressure(
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=1\nfull avg10=3.25 avg60=0.00 avg300=0.00 total=0\n",
        );
        assert_eq!((some, full), (Some(12.5), Some(3.25)));
    }

    #[test]
    fn a_fake_throttled_board_reads_back() {
        let root = std::env::temp_dir().join(format!("adaptived-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        adaptivenet_testkit::board::write_fake_board(
            &root,
            4,
            600_000,
            1_800_000,
            &[("cpu-thermal", 85.0), ("gpu", 40.5)],
            7.0,
        )
        .unwrap();
        let b = SysFs::new(&root).board();
        assert_eq!(b.online_cpus, Some(4));
        assert!((b.freq_ratio.unwrap() - 1.0 / 3.0).abs() < 1e-9, "{b:?}");
        assert_eq!(b.temps.len(), 2);
        assert_eq!(b.temps[0].name, "thermal_zone0:cpu-thermal");
        assert_eq!(b.temps[0].celsius, 85.0);
        assert_eq!(b.pressure.cpu_some_avg10, Some(7.0));
        assert_eq!(b.loadavg, None);
        // An empty root: everything unknown, nothing fails.
        let empty = SysFs::new(&root.join("nothing")).board();
        assert_eq!(empty, Board::default());
        let _ = std::fs::remove_dir_all(&root);
    }
}
