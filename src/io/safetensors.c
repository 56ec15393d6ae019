/* safetensors.c: the one translation unit that compiles the header-only
 * safetensors reader and writer (include/moeq/safetensors.h) into the
 * library. */
#define MOEQ_SAFETENSORS_IMPLEMENTATION
#include "moeq/safetensors.h"
