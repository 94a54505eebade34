//! Generates the protobuf messages and the async ttrpc client and server of
//! the agent protocol from `protos/*.proto`, with the pure-Rust parser (no
//! `protoc` on the build machine).

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let protos = [
        "protos/agent.proto",
        "protos/health.proto",
        "protos/oci.proto",
        "protos/types.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    Codegen::new()
        .out_dir(&out_dir)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent protocol code from protos/");

    // The generated files carry inner attributes, which `include!` rejects:
    // declare them as file modules by absolute path instead.
    let mut modules = String::new();
    for name in [
        "agent",
        "agent_ttrpc",
        "health",
        "health_ttrpc",
        "oci",
        "types",
    ] {
        let path = std::path::Path::new(&out_dir).join(format!("{name}.rs"));
        modules.push_str(&format!(
            "#[path = {:?}]\npub mod {name};\n",
            path.display().to_string()
        ));
    }
    std::fs::write(std::path::Path::new(&out_dir).join("modules.rs"), modules)
        .expect("writing the module list of the generated code");
}
