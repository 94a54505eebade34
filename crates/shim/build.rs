//! Generates the protobuf messages, the async ttrpc server of containerd's
//! task API v2 and the client of its events service from `protos/*.proto`,
//! with the pure-Rust parser (no `protoc` on the build machine), as
//! `vc-agent-protocol` does for the agent.

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: [&str; 7] = [
    "protos/mount.proto",
    "protos/task_types.proto",
    "protos/shim.proto",
    "protos/events.proto",
    "protos/ttrpc_events.proto",
    "protos/runtimeoptions.proto",
    "protos/cgroups_v1.proto",
];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating containerd's task API code from protos/");

    // The generated files carry inner attributes, which `include!` rejects:
    // declare them as file modules by absolute path instead.
    let mut modules = String::new();
    for entry in std::fs::read_dir(&out_dir).expect("reading OUT_DIR") {
        let path = entry.expect("reading OUT_DIR").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && name != "modules" {
            modules.push_str(&format!(
                "#[path = {:?}]\npub mod {name};\n",
                path.display().to_string()
            ));
        }
    }
    std::fs::write(std::path::Path::new(&out_dir).join("modules.rs"), modules)
        .expect("writing the module list of the generated code");
}
