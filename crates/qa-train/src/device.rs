//! Choosing where to train, before any backend is built: burn-cuda without a usable GPU panics
//! deep inside with an unhelpful `RecvError`, so CUDA is probed through the driver library first.

use crate::config::DeviceChoice;

/// Where the work will run, and the one line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDecision {
    pub device: Device,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device index.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "CPU"),
            Device::Cuda(i) => write!(f, "CUDA device {i}"),
        }
    }
}

/// Resolves `auto|cuda|cpu` against what this build and this machine offer.
pub fn choose(choice: DeviceChoice) -> Result<DeviceDecision, String> {
    let probe = cuda_probe();
    match (choice, probe) {
        (DeviceChoice::Cpu, _) => Ok(DeviceDecision {
            device: Device::Cpu,
            reason: "CPU, as configured (device = \"cpu\")".into(),
        }),
        (DeviceChoice::Auto, Ok(name)) | (DeviceChoice::Cuda, Ok(name)) => Ok(DeviceDecision {
            device: Device::Cuda(0),
            reason: format!("CUDA device 0 ({name})"),
        }),
        (DeviceChoice::Auto, Err(why)) => Ok(DeviceDecision {
            device: Device::Cpu,
            reason: format!("CPU, because no CUDA GPU is usable: {why}"),
        }),
        (DeviceChoice::Cuda, Err(why)) => Err(format!(
            "device = \"cuda\" was requested but no CUDA GPU is usable: {why}; use device = \"auto\" \
             or \"cpu\" to train on the CPU"
        )),
    }
}

/// The first GPU's name, or why CUDA cannot be used.
pub fn cuda_probe() -> Result<String, String> {
    if !cfg!(feature = "cuda") {
        return Err("this binary was built without the `cuda` feature".into());
    }
    driver::first_device_name()
}

mod driver {
    use libloading::{Library, Symbol};

    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::ffi::c_char, i32, i32) -> i32;

    pub(super) fn first_device_name() -> Result<String, String> {
        // SAFETY: loading the CUDA driver runs its initialisers, which is what any CUDA program
        // does; the symbols are called with the signatures of the CUDA driver API.
        unsafe {
            let lib = Library::new("libcuda.so.1")
                .or_else(|_| Library::new("libcuda.so"))
                .map_err(|_| "the CUDA driver (libcuda.so) is not installed".to_string())?;
            let init: Symbol<CuInit> = lib.get(b"cuInit").map_err(|e| e.to_string())?;
            let count: Symbol<CuDeviceGetCount> =
                lib.get(b"cuDeviceGetCount").map_err(|e| e.to_string())?;
            let code = init(0);
            if code != 0 {
                return Err(format!("cuInit failed with CUDA error {code}"));
            }
            let mut n = 0;
            let code = count(&mut n);
            if code != 0 || n == 0 {
                return Err("the CUDA driver reports no GPU".into());
            }
            let get: Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").map_err(|e| e.to_string())?;
            let name_of: Symbol<CuDeviceGetName> =
                lib.get(b"cuDeviceGetName").map_err(|e| e.to_string())?;
            let mut device = 0;
            let mut name = [0 as std::ffi::c_char; 128];
            if get(&mut device, 0) == 0 && name_of(name.as_mut_ptr(), 128, device) == 0 {
                let name = std::ffi::CStr::from_ptr(name.as_ptr());
                return Ok(name.to_string_lossy().into_owned());
            }
            Ok("unnamed GPU".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_says_why() {
        let d = choose(DeviceChoice::Cpu).unwrap();
        assert_eq!(d.device, Device::Cpu);
        assert!(d.reason.contains("configured"));
    }

    #[test]
    fn auto_and_cuda_agree_with_the_probe() {
        match cuda_probe() {
            Ok(_) => {
                assert!(matches!(
                    choose(DeviceChoice::Auto).unwrap().device,
                    Device::Cuda(0)
                ));
            }
            Err(why) => {
                let auto = choose(DeviceChoice::Auto).unwrap();
                assert_eq!(auto.device, Device::Cpu);
                assert!(auto.reason.contains(&why));
                let err = choose(DeviceChoice::Cuda).unwrap_err();
                assert!(err.contains("no CUDA GPU is usable"), "{err}");
            }
        }
    }
}
