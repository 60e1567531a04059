# ai_ratelimit: PGXS build
#
#   make                      build (warnings are errors)
#   make install              install into the PostgreSQL found by pg_config
#   make installcheck         regression, isolation and TAP tests, each on a
#                             temporary server started with the extension
#                             preloaded (run as a non-root user)

EXTENSION = ai_ratelimit
MODULE_big = ai_ratelimit
OBJS = \
	src/ai_ratelimit.o \
	src/alerts.o \
	src/calendar.o \
	src/compact.o \
	src/config.o \
	src/decide.o \
	src/extension.o \
	src/guard.o \
	src/money.o \
	src/persist.o \
	src/replica.o \
	src/reservations.o \
	src/resvid.o \
	src/rings.o \
	src/accounts.o \
	src/rules.o \
	src/rulestate.o \
	src/saved.o \
	src/settings.o \
	src/shmem.o \
	src/spend.o \
	src/stats.o \
	src/sweep.o \
	src/triggers.o \
	src/sql_api.o \
	src/usage.o \
	src/users.o \
	src/xact.o

DATA = ai_ratelimit--1.0.sql ai_ratelimit--1.0--1.1.sql ai_ratelimit--1.1--1.2.sql \
	ai_ratelimit--1.2--1.3.sql ai_ratelimit--1.3--1.4.sql \
	ai_ratelimit--1.4--1.5.sql ai_ratelimit--1.5--1.6.sql \
	ai_ratelimit--1.6--1.7.sql ai_ratelimit--1.7--1.8.sql ai_ratelimit--1.8--1.9.sql
PGFILEDESC = "ai_ratelimit - per-user AI rate limits and budgets"

REGRESS = setup plans limits usage bad_input security upgrade operations user_config money_guard around_call models rules usage_days accounts shared_budgets shared_state contract families ratelimit_headers
REGRESS_OPTS = --temp-config=$(srcdir)/test/ai_ratelimit.conf --temp-instance=./tmp_check

ISOLATION = no_wait budget model_budget compact_open account_tree shared_budget
ISOLATION_OPTS = --temp-config=$(srcdir)/test/ai_ratelimit.conf --temp-instance=./tmp_check_iso

TAP_TESTS = 1

PG_CFLAGS = -Wall -Wextra $(WERROR) -Wno-unused-parameter -Wno-missing-field-initializers $(PG_CFLAGS_EXTRA)
SHLIB_LINK = $(SHLIB_LINK_EXTRA)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on every header: a changed shared struct rebuilds all
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# Out-of-tree builds (make -f ../Makefile VPATH=.., as pg_buildext does for
# the Debian package): the objects go to src/ in the build directory.
ifneq ($(srcdir),.)
$(OBJS): | ai-objdir
.PHONY: ai-objdir
ai-objdir:
	@mkdir -p src
endif
