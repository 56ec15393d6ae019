/* fuzz_safetensors.c: the safetensors header parser and its checks
 * (include/moeq/safetensors.h) on arbitrary files. An accepted file must
 * describe tensors that lie inside it: every byte of every tensor is read. */
#include "fuzz.h"

#include "moeq/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(data, size, ".safetensors");
    if (!path)
        return 0;
    st_file f;
    moeq_error err = {0};
    if (st_file_open(&f, path, &err) == MOEQ_OK) {
        unsigned sum = 0;
        for (size_t i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            const unsigned char *p = t->data;
            for (size_t k = 0; k < t->nbytes; k++)
                sum += p[k];
        }
        st_file_close(&f);
        if (sum == 0xdeadbeefu) /* keeps the reads */
            fprintf(stderr, "%u\n", sum);
    } else if (!err.msg[0]) {
        abort(); /* a rejection must say why */
    }
    return 0;
}
