/* libFuzzer driver: jwt_decode, jwt_verify, jwt_check_claims, jwk_from_json (targets.h).
 *
 * A mutation of the base64url text rarely yields JSON, so half the mutations decode the
 * header or the claims, mutate the JSON bytes (with fuzz_jwt.dict) and encode it again. */
#include "targets.h"

#include "core/b64.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (fuzz_jwt_init() != 0) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_jwt_one(data, size);
    return 0;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    const uint8_t *d1 = size ? memchr(data, '.', size) : NULL;
    if (seed % 2 || !d1) return LLVMFuzzerMutate(data, size, max_size);
    const uint8_t *d2 = memchr(d1 + 1, '.', size - (size_t)(d1 + 1 - data));
    /* segment [a, b): the header or the claims */
    size_t a = (seed / 2) % 2 ? (size_t)(d1 + 1 - data) : 0;
    size_t b = a ? (d2 ? (size_t)(d2 - data) : size) : (size_t)(d1 - data);
    size_t n = 0;
    unsigned char *raw = b64url_decode((const char *)data + a, b - a, &n);
    if (!raw) return LLVMFuzzerMutate(data, size, max_size);
    uint8_t *buf = xmalloc(max_size);
    size_t m = n < max_size ? n : max_size;
    memcpy(buf, raw, m);
    m = LLVMFuzzerMutate(buf, m, max_size);
    char *enc = b64url_encode(buf, m);
    size_t elen = strlen(enc), out = a + elen + (size - b);
    if (out <= max_size) {
        memmove(data + a + elen, data + b, size - b);
        memcpy(data + a, enc, elen);
    }
    free(enc);
    free(buf);
    free(raw);
    return out <= max_size ? out : LLVMFuzzerMutate(data, size, max_size);
}
