# agentid — one binary, build/agentid.
#   make         build build/agentid
#   make check   install what is missing, build, run every test (plain and under ASan+UBSan)
#   make up      install what is missing, build, run the local stack
CC      ?= cc
Q       ?= @
BUILD   ?= build
PKGS    := libmicrohttpd libcurl jansson openssl yaml-0.1 gnutls
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo 0.1.0)

CFLAGS  ?= -O2 -g
CFLAGS  += -std=c17 -D_GNU_SOURCE -pthread -Isrc \
           -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wformat-security \
           -Wmissing-prototypes -Wstrict-prototypes -Wno-format-nonliteral \
           -DAGENTID_VERSION='"$(VERSION)"' \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -pthread

ifeq ($(SAN),1)
CC      := clang
CFLAGS  += -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
endif

LIB_SRC := $(sort $(shell find src -name '*.c' ! -name main.c ! -path '*/node_modules/*'))
# The chat agent's web UI, compiled in as C arrays (scripts/embed.sh).
WEB_SRC := $(sort $(wildcard src/demo/web/*.html src/demo/web/*.js src/demo/web/*.css src/demo/web/*.svg))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/web_assets.o
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps check test unit up clean fuzz bench
all: $(BUILD)/agentid

$(BUILD)/agentid: $(BUILD)/src/main.o $(BUILD)/libagentid.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libagentid.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The files that print the version are rebuilt when it changes (a commit, a dirty tree): the
# stamp is rewritten only then, so `agentid version` never names an older commit.
VERSION_STAMP := $(BUILD)/gen/version
$(VERSION_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(VERSION)' | cmp -s - $@ || echo '$(VERSION)' >$@
FORCE:
$(patsubst %.c,$(BUILD)/%.o,$(shell grep -l AGENTID_VERSION $(LIB_SRC))): $(VERSION_STAMP)

$(BUILD)/%.o: %.c $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/gen/web_assets.c: scripts/embed.sh $(WEB_SRC)
	@mkdir -p $(dir $@)
	$(Q)scripts/embed.sh $@ $(WEB_SRC)

$(BUILD)/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libagentid.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libagentid.a $(LDLIBS) -lcmocka

unit: $(UNIT_BIN)

deps:
	@scripts/deps.sh build

check:
	@scripts/deps.sh check
	$(MAKE) --no-print-directory all unit
	$(MAKE) --no-print-directory BUILD=build/asan SAN=1 all unit
	tests/run.sh build build/asan

up:
	@scripts/deps.sh build
	$(MAKE) --no-print-directory all
	$(BUILD)/agentid up $(if $(PROFILE),--profile $(PROFILE))

fuzz:
	$(MAKE) --no-print-directory -f tests/fuzz/Makefile

bench: all
	bench/run

clean:
	rm -rf build
