//! `list_tokens`: what a module offers (slots, tokens, mechanisms) as dicts, for
//! `hsmkey tokens`. No session, no login.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::core::{inventory, module};
use crate::python::args::{init_args_arg, path_arg};
use crate::python::gil::detach;

/// Every slot of the module with its token and mechanisms (no session, no login).
#[pyfunction]
#[pyo3(signature = (module_path, *, mechanisms=true, init_args=None))]
pub fn list_tokens<'py>(
    py: Python<'py>,
    module_path: &Bound<'py, PyAny>,
    mechanisms: bool,
    init_args: Option<&Bound<'py, PyAny>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let path = path_arg(module_path)?;
    let init_args = init_args_arg(init_args)?;
    let slots = detach(py, move || -> crate::core::error::Result<_> {
        let module = module::load_with(&path, init_args.as_deref())?;
        inventory::list(&module, mechanisms)
    })?;
    slots
        .into_iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("slot_id", s.slot_id)?;
            d.set_item("slot_description", s.description)?;
            d.set_item("slot_manufacturer", s.manufacturer)?;
            d.set_item("slot_flags", s.slot_flags)?;
            d.set_item("token_present", s.token.is_some())?;
            let t = s.token;
            d.set_item("label", t.as_ref().map(|t| t.label.clone()))?;
            d.set_item("manufacturer", t.as_ref().map(|t| t.manufacturer.clone()))?;
            d.set_item("model", t.as_ref().map(|t| t.model.clone()))?;
            d.set_item("serial", t.as_ref().map(|t| t.serial.clone()))?;
            d.set_item(
                "flags",
                t.as_ref().map(|t| t.flags.clone()).unwrap_or_default(),
            )?;
            d.set_item(
                "hardware_version",
                t.as_ref().map(|t| t.hardware_version.clone()),
            )?;
            d.set_item(
                "firmware_version",
                t.as_ref().map(|t| t.firmware_version.clone()),
            )?;
            let mechs = PyList::empty(py);
            for m in t.map(|t| t.mechanisms).unwrap_or_default() {
                let md = PyDict::new(py);
                md.set_item("name", m.name)?;
                md.set_item("type", m.code)?;
                md.set_item("min_key_size", m.min_key_size)?;
                md.set_item("max_key_size", m.max_key_size)?;
                md.set_item("flags", m.flags)?;
                mechs.append(md)?;
            }
            d.set_item("mechanisms", mechs)?;
            Ok(d)
        })
        .collect()
}
