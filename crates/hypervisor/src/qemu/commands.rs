//! QMP commands whose arguments are the same JSON the command line uses
//! for cold-plugged devices, so a device is described once for both
//! paths. They plug into the `qapi` client like its generated commands.

use serde::Serialize;
use serde_json::Value;

macro_rules! json_command {
    ($(#[$doc:meta])* $name:ident = $qmp:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub Value);

        impl qapi::Command for $name {
            type Ok = qapi::Empty;
            const NAME: &'static str = $qmp;
            const ALLOW_OOB: bool = false;
        }

        impl qapi::qmp::QmpCommand for $name {}
    };
}

json_command!(
    /// `device_add` with the same JSON as `-device`.
    DeviceAdd = "device_add"
);
json_command!(
    /// `blockdev-add` with the same JSON as `-blockdev`.
    BlockdevAdd = "blockdev-add"
);
json_command!(
    /// `chardev-add` (`{"id": .., "backend": ..}`).
    ChardevAdd = "chardev-add"
);
json_command!(
    /// `netdev_add` (`{"type": "tap", "id": .., ...}`).
    NetdevAdd = "netdev_add"
);
json_command!(
    /// `object-add` (`{"qom-type": .., "id": .., <properties>}`).
    ObjectAdd = "object-add"
);

/// Queries whose answer is read as plain JSON: only the fields used are
/// parsed, so QEMU versions that add or drop others do not matter.
macro_rules! json_query {
    ($(#[$doc:meta])* $name:ident = $qmp:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize)]
        pub struct $name {}

        impl qapi::Command for $name {
            type Ok = Value;
            const NAME: &'static str = $qmp;
            const ALLOW_OOB: bool = false;
        }

        impl qapi::qmp::QmpCommand for $name {}
    };
}

json_query!(
    /// `query-hotpluggable-cpus`: every vCPU slot, its topology ids and
    /// whether a vCPU is in it.
    QueryHotpluggableCpus = "query-hotpluggable-cpus"
);
json_query!(
    /// `query-memory-devices`: the DIMMs plugged.
    QueryMemoryDevices = "query-memory-devices"
);
