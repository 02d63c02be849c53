//! A fake board under a folder, for the monitor and adaptation tests: the
//! sysfs and procfs files `adaptived` reads (`monitor.root` points at it).

use std::path::Path;

/// Write a fake board under `root`: `cpus` CPUs online at `cur_khz` of
/// `max_khz`, thermal zones `(type, °C)`, CPU pressure (`some avg10`).
pub fn write_fake_board(
    root: &Path,
    cpus: usize,
    cur_khz: u64,
    max_khz: u64,
    zones: &[(&str, f64)],
    cpu_pressure: f64,
) -> std::io::Result<()> {
    let base = root.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&base)?;
    let online = if cpus <= 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    write_replace(&base.join("online"), &format!("{online}\n"))?;
    for c in 0..cpus {
        let d = base.join(format!("cpu{c}/cpufreq"));
        std::fs::create_dir_all(&d)?;
        write_replace(&d.join("scaling_cur_freq"), &format!("{cur_khz}\n"))?;
        write_replace(&d.join("cpuinfo_max_freq"), &format!("{max_khz}\n"))?;
    }
    let th = root.join("sys/class/thermal");
    std::fs::create_dir_all(&th)?;
    for (i, (kind, c)) in zones.iter().enumerate() {
        let d = th.join(format!("thermal_zone{i}"));
        std::fs::create_dir_all(&d)?;
        write_replace(&d.join("type"), &format!("{kind}\n"))?;
        write_replace(
            &d.join("temp"),
            &format!("{}\n", (c * 1000.0).round() as i64),
        )?;
    }
    let pr = root.join("proc/pressure");
    std::fs::create_dir_all(&pr)?;
    write_replace(
        &pr.join("cpu"),
        &format!("some avg10={cpu_pressure:.2} avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
    )?;
    write_replace(
        &pr.join("memory"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )?;
    Ok(())
}

/// Replace a file's contents atomically (a reader never sees it half written).
fn write_replace(p: &Path, text: &str) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp-fake");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, p)
}
