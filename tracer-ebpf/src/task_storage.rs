//! Task-local storage (BPF_MAP_TYPE_TASK_STORAGE): one value hung off each task_struct.
//! A thread's wait in progress lives here instead of in a hash map keyed by tid: the kernel
//! finds it from the task pointer with no hashing and no bucket lock, there is no capacity
//! to fill, and it is freed with the thread. aya-ebpf 0.2.1 has no wrapper for this map type, so this
//! is the same BTF map definition its `btf_maps` use (a `.maps` struct whose pointer
//! fields encode type, key, value, max_entries and flags for the loader).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type, task_struct},
    helpers::generated::bpf_task_storage_get,
};

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    // Task storage requires max_entries 0 and BPF_F_NO_PREALLOC.
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader patches; Rust never dereferences them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    fn as_ptr(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The value of `task`, if it has one.
    ///
    /// # Safety
    /// `task` must be a BTF task pointer (from `bpf_get_current_task_btf` or a tp_btf
    /// argument); the value is shared with the task's other probes.
    #[inline(always)]
    pub unsafe fn get(&self, task: *mut task_struct) -> Option<*mut T> {
        // SAFETY: as the caller promises; a null value means "do not create".
        let value = unsafe { bpf_task_storage_get(self.as_ptr(), task, ptr::null_mut(), 0) };
        (!value.is_null()).then_some(value.cast())
    }

    /// The value of `task`, created zeroed when it has none (None when the kernel cannot
    /// allocate it).
    ///
    /// # Safety
    /// As for `get`.
    #[inline(always)]
    pub unsafe fn get_or_create(&self, task: *mut task_struct) -> Option<*mut T> {
        // SAFETY: as above.
        let value = unsafe {
            bpf_task_storage_get(
                self.as_ptr(),
                task,
                ptr::null_mut(),
                BPF_LOCAL_STORAGE_GET_F_CREATE.into(),
            )
        };
        (!value.is_null()).then_some(value.cast())
    }
}
