//! The target's modules as exporters describe them: path, GNU build id, address range and
//! the file offset mapped at its start.

use std::collections::BTreeMap;

use super::ModuleInfo;
use crate::stacks::ProcessImage;

/// The modules of `image` by file name, with their build ids (read once per file).
pub fn module_infos(image: &ProcessImage) -> BTreeMap<String, ModuleInfo> {
    use object::Object as _;
    let mut modules: BTreeMap<String, ModuleInfo> = BTreeMap::new();
    for module in image.modules() {
        let info = modules.entry(module.name().to_string()).or_insert_with(|| ModuleInfo {
            path: module.path.to_string_lossy().into_owned(),
            build_id: object::File::parse(module.file_bytes())
                .ok()
                .and_then(|file| file.build_id().ok().flatten())
                .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect()),
            start: module.avma_range.start,
            end: module.avma_range.end,
            file_offset: module.file_offset,
        });
        if module.avma_range.start < info.start {
            info.start = module.avma_range.start;
            info.file_offset = module.file_offset;
        }
        info.end = info.end.max(module.avma_range.end);
    }
    modules
}
