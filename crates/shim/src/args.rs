//! The shim's command line, as containerd writes it: Go `flag` syntax
//! (`-namespace k8s.io -address /run/containerd/containerd.sock
//! -publish-binary /usr/bin/containerd -id ID [-debug] start|delete`).
//! Long options with one dash are turned into clap's two-dash form, then
//! parsed by clap.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What the shim binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Start (or find) the shim serving this task; print its address.
    Start,
    /// Free what a dead shim left for this task; print a `DeleteResponse`.
    Delete,
    /// Make the VM template of the configuration's `[factory]` (replacing
    /// any previous one); sandboxes clone it when `enable_template`.
    FactoryInit,
    /// Say whether the template exists and what it was made from.
    FactoryStatus,
    /// Remove the template and its memory.
    FactoryDestroy,
    /// Internal: the process the daemon parks in the pod's network
    /// namespace (see `netns::Holder`); waits for stdin to close.
    #[value(hide = true)]
    NetnsHolder,
}

/// The shim's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "containerd-shim-vc-v2",
    version,
    about = "containerd shim v2 running containers in VMs"
)]
pub struct Args {
    /// containerd namespace of the task.
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// The task (container) id.
    #[arg(long, default_value = "")]
    pub id: String,
    /// containerd's main (gRPC) socket.
    #[arg(long, default_value = "")]
    pub address: String,
    /// The binary that publishes events when there is no ttrpc address.
    #[arg(long = "publish-binary", default_value = "containerd")]
    pub publish_binary: PathBuf,
    /// The bundle (delete; otherwise the working directory).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Debug logs.
    #[arg(long)]
    pub debug: bool,
    /// A socket path to serve on (instead of an inherited socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The inherited listening socket (set by `start` for the daemon).
    #[arg(long = "socket-fd", hide = true)]
    pub socket_fd: Option<i32>,
    /// What to do; none serves the task API (the daemon `start` spawns).
    #[arg(value_enum)]
    pub action: Option<Action>,
}

impl Args {
    /// Parses containerd's command line (program name first).
    pub fn parse_from_go<I, T>(args: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Args::try_parse_from(args.into_iter().map(Into::into).enumerate().map(|(i, a)| {
            if i == 0 {
                return a;
            }
            go_flag_to_long(a)
        }))
    }

    /// The arguments of the daemon `start` spawns: the same task, serving
    /// on the inherited socket `socket_fd`.
    pub fn daemon_args(&self, socket_fd: i32) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-namespace".into(),
            self.namespace.clone().into(),
            "-id".into(),
            self.id.clone().into(),
            "-address".into(),
            self.address.clone().into(),
            "-publish-binary".into(),
            self.publish_binary.clone().into(),
            "-socket-fd".into(),
            socket_fd.to_string().into(),
        ];
        if self.debug {
            args.push("-debug".into());
        }
        args
    }
}

/// `-name` and `-name=value` as `--name`, `--name=value`; anything else
/// (values, `--x`, `-`, single letters) as it is.
fn go_flag_to_long(arg: OsString) -> OsString {
    match arg.to_str() {
        Some(s) if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") => {
            let name = s[1..].split('=').next().unwrap_or_default();
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return format!("-{s}").into();
            }
            arg
        }
        _ => arg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_start_command_line_parses() {
        let args = Args::parse_from_go([
            "containerd-shim-vc-v2",
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(args.namespace, "k8s.io");
        assert_eq!(args.address, "/run/containerd/containerd.sock");
        assert_eq!(args.publish_binary, PathBuf::from("/usr/bin/containerd"));
        assert_eq!(args.id, "abc");
        assert!(args.debug);
        assert_eq!(args.action, Some(Action::Start));
    }

    #[test]
    fn delete_with_bundle_and_equals_forms() {
        let args = Args::parse_from_go([
            "shim",
            "-namespace=default",
            "--id=x",
            "-bundle",
            "/run/b",
            "delete",
        ])
        .unwrap();
        assert_eq!(args.namespace, "default");
        assert_eq!(args.id, "x");
        assert_eq!(args.bundle, Some(PathBuf::from("/run/b")));
        assert_eq!(args.action, Some(Action::Delete));
    }

    #[test]
    fn the_daemons_arguments_round_trip_without_an_action() {
        let start = Args::parse_from_go([
            "shim",
            "-namespace",
            "n",
            "-id",
            "i",
            "-address",
            "/a",
            "-debug",
            "start",
        ])
        .unwrap();
        let daemon = Args::parse_from_go(
            std::iter::once(OsString::from("shim")).chain(start.daemon_args(3)),
        )
        .unwrap();
        assert_eq!(daemon.action, None);
        assert_eq!(daemon.socket_fd, Some(3));
        assert_eq!((daemon.namespace, daemon.id), ("n".into(), "i".into()));
        assert!(daemon.debug);
    }

    #[test]
    fn the_holders_command_line_parses() {
        let args = Args::parse_from_go(["vc-netns-holder", "-id", "p", "netns-holder"]).unwrap();
        assert_eq!(args.action, Some(Action::NetnsHolder));
    }

    #[test]
    fn an_unknown_action_is_refused() {
        assert!(Args::parse_from_go(["shim", "-id", "x", "explode"]).is_err());
        assert!(Args::parse_from_go(["shim", "-no-such-flag", "start"]).is_err());
    }
}
