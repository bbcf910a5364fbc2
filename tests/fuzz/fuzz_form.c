/* libFuzzer driver: form_parse / form_get / form_escape on arbitrary bytes (targets.h). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_form_one(data, size);
    return 0;
}
