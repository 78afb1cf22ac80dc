//! What a Python thread's wait waits on, named as its program names it: the object the
//! runtime code was called on (the `Queue` of `Queue.put`, the `Condition` of
//! `Condition.wait`) or the lock whose futex the thread sleeps on, and the local,
//! attribute or global that holds it (`Queue stats_queue`, `Lock self.client_lock`).

use super::code::read_str;
use super::layout::{DICT_KEYS, DICT_VALUES, ManagedValues, OB_TYPE, TP_NAME};
use super::{PythonFrame, PythonProcess, is_runtime_file};
use crate::memory::word;

/// Entries of one dict read at most (a module's globals have a few hundred).
const MAX_DICT_ENTRIES: u64 = 1 << 16;
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+): the instance's attributes live outside a dict of
/// its own until one is made; `Py_TPFLAGS_INLINE_VALUES` (3.13): right after it.
const MANAGED_DICT: u64 = 1 << 4;
const INLINE_VALUES: u64 = 1 << 2;
const TP_BASICSIZE: u64 = 32;
const TP_FLAGS: u64 = 168;
/// A Python int's digit count (3.11: signed `ob_size`; 3.12+: `lv_tag`, the count shifted
/// left by 3 above a sign) and its 30-bit digits.
const LONG_SIZE: u64 = 16;
const LONG_DIGITS: u64 = 24;
/// `PyModuleObject.md_dict`: a module's globals.
const MODULE_DICT: u64 = 16;
/// `_thread.lock` and `_thread.RLock` keep their `PyThread_type_lock` (a `sem_t`, whose
/// first word is the futex) right after the object header.
const LOCK_HANDLE: u64 = 16;

impl PythonProcess {
    /// The Python object a thread waits on, if it can be named. `frames` leaf first;
    /// `futex` the address a futex wait sleeps on.
    pub fn waited_object(&mut self, frames: &[PythonFrame], futex: Option<u64>) -> Option<String> {
        let site = frames.iter().position(|frame| !is_runtime_file(&frame.code.filename))?;
        let site_frame = &frames[site];
        let object = match site.checked_sub(1).map(|callee| &frames[callee]) {
            Some(callee) => self.self_argument(callee)?,
            None => self.lock_with_futex(site_frame, futex?)?,
        };
        let type_name = self.type_name(object).unwrap_or_else(|| "object".to_owned());
        let type_name = type_name.rsplit('.').next().unwrap_or(&type_name).to_owned();
        Some(match self.holder_of(site_frame, object) {
            Some(holder) => format!("{type_name} {holder}"),
            None => format!("{type_name} at {object:#x}"),
        })
    }

    /// The `self` a method frame runs on.
    fn self_argument(&self, frame: &PythonFrame) -> Option<u64> {
        let is_method = frame.code.argcount >= 1
            && frame.code.local_names.first().is_some_and(|name| name == "self");
        is_method
            .then(|| self.read_word(frame.address + self.layout.frame.localsplus))
            .flatten()
            .filter(|&object| object != 0)
    }

    /// A `_thread.lock`/`RLock` among the frame's locals and globals whose futex is `futex`.
    /// Every futex wait of a thread in Python code asks (the GIL's too), so the candidates'
    /// types are read in one call and each type is named once.
    fn lock_with_futex(&mut self, frame: &PythonFrame, futex: u64) -> Option<u64> {
        let locals = self.locals(frame).into_iter().map(|(_, value)| value);
        let globals = self.dict_entries(frame.globals).into_iter().map(|(_, value)| value);
        let candidates: Vec<u64> = locals.chain(globals).collect();
        let type_words: Vec<u64> =
            candidates.iter().map(|object| object.wrapping_add(OB_TYPE)).collect();
        let types = self.memory.read_many(&type_words, 8);
        let locks: Vec<u64> = candidates
            .into_iter()
            .zip(types)
            .filter_map(|(object, kind)| Some((object, word(&kind?, 0))))
            .filter(|&(_, kind)| self.is_lock_type(kind))
            .map(|(object, _)| object)
            .collect();
        locks.into_iter().find(|&lock| self.read_word(lock + LOCK_HANDLE) == Some(futex))
    }

    /// Whether `kind` is `_thread.lock` or `_thread.RLock` (remembered per type).
    fn is_lock_type(&mut self, kind: u64) -> bool {
        if let Some(&is_lock) = self.lock_types.get(&kind) {
            return is_lock;
        }
        let is_lock = self
            .name_of_type(kind)
            .is_some_and(|name| name == "_thread.lock" || name == "_thread.RLock");
        self.lock_types.insert(kind, is_lock);
        is_lock
    }

    /// The name `frame` holds `object` by: a local, an attribute of its `self`, a global.
    fn holder_of(&self, frame: &PythonFrame, object: u64) -> Option<String> {
        let locals = self.locals(frame);
        if let Some((name, _)) =
            locals.iter().find(|(name, value)| *value == object && name != "self")
        {
            return Some(name.clone());
        }
        let this = locals.iter().find(|(name, _)| name == "self").map(|(_, value)| *value);
        if let Some(this) = this
            && let Some(attribute) = self.attribute_holding(this, object)
        {
            return Some(format!("self.{attribute}"));
        }
        self.dict_entries(frame.globals)
            .into_iter()
            .find(|&(_, value)| value == object)
            .and_then(|(key, _)| read_str(&self.memory, &self.layout, key))
    }

    /// A frame's named locals and their values (arguments first).
    pub(super) fn locals(&self, frame: &PythonFrame) -> Vec<(String, u64)> {
        let names = &frame.code.local_names;
        let mut values = vec![0u8; names.len() * 8];
        let start = frame.address + self.layout.frame.localsplus;
        if self.memory.read_exact(start, &mut values).is_err() {
            return Vec::new();
        }
        names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.clone(), word(&values, index * 8)))
            .filter(|(_, value)| *value != 0)
            .collect()
    }

    /// The attribute of `instance` that holds `object`.
    fn attribute_holding(&self, instance: u64, object: u64) -> Option<String> {
        self.attributes(instance)
            .into_iter()
            .find(|&(_, value)| value == object)
            .and_then(|(key, _)| read_str(&self.memory, &self.layout, key))
    }

    /// The value of attribute `name` of `instance`.
    pub(super) fn attribute(&self, instance: u64, name: &str) -> Option<u64> {
        self.value_named(self.attributes(instance), name)
    }

    /// An instance's attributes as (name object, value): its managed values (the keys
    /// shared by its type) or its dict.
    pub(super) fn attributes(&self, instance: u64) -> Vec<(u64, u64)> {
        // The process's words: a wild one wraps, and its read fails.
        let Some(kind) = self.read_word(instance.wrapping_add(OB_TYPE)) else {
            return Vec::new();
        };
        let flags = self.read_word(kind.wrapping_add(TP_FLAGS)).unwrap_or_default();
        if flags & MANAGED_DICT == 0 {
            return Vec::new();
        }
        let words_before =
            |words: u64| self.read_word(instance.wrapping_sub(8 * words)).unwrap_or_default();
        let values = match self.layout.managed_values {
            ManagedValues::PointerBefore => Some(words_before(4)).filter(|&values| values != 0),
            ManagedValues::TaggedBefore => {
                let dict_or_values = words_before(3);
                (dict_or_values & 1 == 1).then(|| dict_or_values.wrapping_add(1))
            }
            ManagedValues::Inline if flags & INLINE_VALUES != 0 => {
                let size = self.read_word(kind.wrapping_add(TP_BASICSIZE)).unwrap_or_default();
                let values = instance.wrapping_add(size);
                let mut header = [0u8; 4];
                let valid = self.memory.read_exact(values, &mut header).is_ok() && header[3] != 0;
                valid.then_some(values)
            }
            ManagedValues::Inline => None,
        };
        match values {
            Some(values) => {
                let keys = self
                    .read_word(kind.wrapping_add(self.layout.type_cached_keys))
                    .unwrap_or_default();
                self.keys_and_values(keys, values.wrapping_add(self.layout.dict_values_start))
            }
            None => self.dict_entries(words_before(3)),
        }
    }

    /// The value of a Python int of up to two digits (60 bits: a thread id), `None` for a
    /// negative or larger one.
    pub(super) fn small_int(&self, object: u64) -> Option<u64> {
        let mut bytes = [0u8; LONG_DIGITS as usize + 8];
        self.memory.read_exact(object, &mut bytes).ok()?;
        let size = word(&bytes, LONG_SIZE as usize);
        let digits = match self.layout.version {
            (3, 11) => i64::try_from(size).ok()?,
            // Sign 0 positive, 1 zero, 2 negative.
            _ if size & 3 == 2 => return None,
            _ => i64::try_from(size >> 3).ok()?,
        };
        let digit = |index: usize| {
            let at = LONG_DIGITS as usize + 4 * index;
            u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()))
        };
        match digits {
            0 => Some(0),
            1 => Some(digit(0)),
            2 => Some(digit(0) | digit(1) << 30),
            _ => None,
        }
    }

    /// Global `name` of module `module` (`sys.modules[module].name`), `None` before the
    /// program imports it.
    pub(super) fn module_global(&self, module: &str, name: &str) -> Option<u64> {
        let interp = self.read_word(self.runtime + self.layout.runtime_interpreters_head)?;
        let modules = self.read_word(interp.wrapping_add(self.layout.interp_modules))?;
        let module = self.dict_get(modules, module)?;
        let globals = self.read_word(module.wrapping_add(MODULE_DICT))?;
        self.dict_get(globals, name)
    }

    /// The value of string key `key` in a dict.
    fn dict_get(&self, dict: u64, key: &str) -> Option<u64> {
        self.value_named(self.dict_entries(dict), key)
    }

    /// The value of the (string key, value) pair whose key reads `name`.
    fn value_named(&self, pairs: Vec<(u64, u64)>, name: &str) -> Option<u64> {
        pairs.into_iter().find_map(|(key, value)| {
            (read_str(&self.memory, &self.layout, key).as_deref() == Some(name)).then_some(value)
        })
    }

    /// A dict's (key, value) pairs.
    pub(super) fn dict_entries(&self, dict: u64) -> Vec<(u64, u64)> {
        if dict == 0 {
            return Vec::new();
        }
        let Some(keys) = self.read_word(dict.wrapping_add(DICT_KEYS)) else {
            return Vec::new();
        };
        let values = self.read_word(dict.wrapping_add(DICT_VALUES)).unwrap_or_default();
        let values =
            if values == 0 { 0 } else { values.wrapping_add(self.layout.dict_values_start) };
        self.keys_and_values(keys, values)
    }

    /// The live entries of a `PyDictKeysObject`, values from `values` for a split table.
    fn keys_and_values(&self, keys: u64, values: u64) -> Vec<(u64, u64)> {
        let mut head = [0u8; 32];
        if keys == 0 || self.memory.read_exact(keys, &mut head).is_err() {
            return Vec::new();
        }
        let (log2_index_bytes, kind) = (head[9], head[10]);
        let entries = word(&head, 24).min(MAX_DICT_ENTRIES) as usize;
        if log2_index_bytes > 40 {
            return Vec::new();
        }
        // General tables hold (hash, key, value), unicode and split ones (key, value).
        let (entry_size, key_at) = if kind == 0 { (24, 8) } else { (16, 0) };
        let start = keys + 32 + (1u64 << log2_index_bytes);
        let mut table = vec![0u8; entries * entry_size];
        if self.memory.read_exact(start, &mut table).is_err() {
            return Vec::new();
        }
        let mut split_values = vec![0u8; if values != 0 { entries * 8 } else { 0 }];
        if values != 0 && self.memory.read_exact(values, &mut split_values).is_err() {
            return Vec::new();
        }
        (0..entries)
            .map(|index| {
                let entry = index * entry_size;
                let key = word(&table, entry + key_at);
                let value = if values != 0 {
                    word(&split_values, index * 8)
                } else {
                    word(&table, entry + key_at + 8)
                };
                (key, value)
            })
            .filter(|&(key, value)| key != 0 && value != 0)
            .collect()
    }

    /// `type(object).__name__` as the type spells it (`_thread.lock`, `Queue`).
    pub(super) fn type_name(&self, object: u64) -> Option<String> {
        let kind = self.read_word(object.wrapping_add(OB_TYPE)).filter(|&kind| kind != 0)?;
        self.name_of_type(kind)
    }

    /// A type object's `tp_name`.
    fn name_of_type(&self, kind: u64) -> Option<String> {
        let name = self.read_word(kind.wrapping_add(TP_NAME)).filter(|&name| name != 0)?;
        // A name near the end of its mapping: read what there is.
        let mut bytes = [0u8; 128];
        let len = [128, 64, 32, 16]
            .into_iter()
            .find(|&len| self.memory.read_exact(name, &mut bytes[..len]).is_ok())?;
        let end = bytes[..len].iter().position(|&byte| byte == 0)?;
        String::from_utf8(bytes[..end].to_vec()).ok().filter(|name| !name.is_empty())
    }
}
