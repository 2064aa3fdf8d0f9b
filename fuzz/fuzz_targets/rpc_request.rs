//! A line a client sends openboxd's socket: the JSON-RPC envelope, then the params of each
//! method it may name, and a call handed over by the CLI. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<proto::rpc::Request>(data) {
        let _ = serde_json::from_value::<proto::rpc::Hello>(req.params.clone());
        let _ = serde_json::from_value::<proto::rpc::CliParams>(req.params.clone());
        let _ = serde_json::from_value::<proto::rpc::RunParams>(req.params.clone());
        let _ = serde_json::from_value::<proto::rpc::NodesParams>(req.params);
    }
    let _ = serde_json::from_slice::<proto::request::Call>(data);
});
