// The words of a config option that takes one of a few: each listed once, with its value.
#pragma once

#include <cstddef>

#include "nnx/framework/error.h"

namespace nnx::trainer {

/// One value of a config option that takes a word: the value and the word (what YAML gives and
/// to_json() writes). Each option's words are listed once, in a table of these.
template <class E>
struct EnumName {
  E value;
  const char* name;
};

/// The word of `value` in `names`. Throws nnx::InternalError when it is not listed.
template <class E, size_t N>
const char* name_of(E value, const EnumName<E> (&names)[N]) {
  for (const auto& n : names)
    if (n.value == value) return n.name;
  throw InternalError("a config value without a name in its table");
}

}  // namespace nnx::trainer
