// Shared by the examples: where the device is and who it is, from the command line.
//
//   <example> <device-dir> [host] [port] [thing]
//
// <device-dir> is what `thingd device provision <thing> --out <device-dir>` wrote. The host
// defaults to the one in endpoint.txt, the port to 8883, the thing (also the client id) to
// the directory's name.

use std::path::PathBuf;

use thingd_device::{ConnectOptions, Identity};

pub(crate) struct Device {
    pub(crate) thing: String,
    pub(crate) options: ConnectOptions,
}

pub(crate) fn device_from_args() -> anyhow::Result<Device> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        anyhow::bail!("usage: <example> <device-dir> [host] [port] [thing]");
    };
    let host = match args.next() {
        Some(h) => h,
        None => std::fs::read_to_string(dir.join("endpoint.txt"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned()),
    };
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(8883);
    let thing = match args.next() {
        Some(t) => t,
        None => dir
            .canonicalize()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let identity = Identity::from_dir(&dir)?;
    let options = ConnectOptions::new(host, port, thing.clone(), identity);
    Ok(Device { thing, options })
}
