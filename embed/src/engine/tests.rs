//! The executor plan of the engine.

use super::*;
use tch::Device;

#[test]
fn cpu_executors_share_the_cores_and_gpus_get_one_each() {
    let plan = |devices: &[Device], n, cores| {
        executors(devices, n, cores)
            .into_iter()
            .map(|e| (e.name, e.threads))
            .collect::<Vec<_>>()
    };
    // Unset: one per core, at most four.
    assert_eq!(
        plan(&[Device::Cpu], None, 2),
        [("cpu#0".into(), Some(1)), ("cpu#1".into(), Some(1))]
    );
    assert_eq!(plan(&[Device::Cpu], None, 16).len(), 4);
    assert!(plan(&[Device::Cpu], None, 16)
        .iter()
        .all(|(_, t)| *t == Some(4)));
    assert_eq!(plan(&[Device::Cpu], None, 1), [("cpu".into(), Some(1))]);
    // Configured: the cores split evenly, never below one thread.
    assert_eq!(plan(&[Device::Cpu], Some(1), 8), [("cpu".into(), Some(8))]);
    assert_eq!(
        plan(&[Device::Cpu], Some(3), 2)[2],
        ("cpu#2".into(), Some(1))
    );
    assert_eq!(
        plan(&[Device::Cuda(0), Device::Cuda(1)], Some(3), 16),
        [("cuda:0".into(), None), ("cuda:1".into(), None)]
    );
}
