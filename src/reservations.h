/*-------------------------------------------------------------------------
 *
 * reservations.h
 *		The pool of budget reservations (reservations.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RESERVATIONS_H
#define AI_RESERVATIONS_H

#include "shmem.h"

/* A reservation's rule slots: the model rules it names, then which rules its check knew. */
#define AI_RESV_RULES			4
#define AI_RESV_RULES_NAMED		(AI_RESV_RULES - 1)

typedef enum AiResvState
{
	AI_RESV_FREE = 0,
	AI_RESV_OPEN,				/* counted in its entry's reserved */
	AI_RESV_SETTLING			/* settled by an open transaction */
} AiResvState;

/*
 * A budget reservation, in a fixed pool of slots.  A check that charges
 * accounts makes one more slot per account, in the account's list, with
 * the negated id (a "shadow", accounts.c): found by walking that list,
 * never by the id index.
 */
typedef struct AiReservation
{
	int64		id;				/* see resvid.c; 0 when free */
	AiKey		key;			/* owner */
	AiMoney		amount;
	TimestampTz expires_at;
	int32		next;			/* next slot of the same user, or free list */
	int32		prev;
	uint8		state;			/* AiResvState */
	bool		all_rules;		/* made without a model: holds on every rule */
	TransactionId settler;		/* AI_RESV_SETTLING: the recording transaction */
	int32		shadow;			/* the first shadow (of a primary) or the next
								 * one (of a shadow), nearest account first;
								 * -1: none; AI_RESV_SHADOWS_UNLINKED: loaded
								 * from a save, which keeps no links */
	int64		tokens;			/* tokens it holds for token rules */
	int32		rules[AI_RESV_RULES];	/* model rules (ai_rules ids) it holds on, 0: none;
										 * the last: which rules its check knew
										 * (rulestate.c) */
} AiReservation;

#define AI_RESV_SHADOWS_UNLINKED	(-2)

/* Most reservation slots a server may have (ai_ratelimit.max_reservations). */
#define AI_RESV_MAX_SLOTS		((1 << 24) - 1)

/* The slots, max_reservations of them (ai_resv_shmem_init). */
extern AiReservation *ai_resv_slots;
extern Size ai_resv_shmem_size(void);
extern void ai_resv_shmem_init(void);

/*
 * Which of a user's reservations a walk visits (ai_resv_iter_next):
 *   AI_RESV_WALK_ALL      every one in the list
 *   AI_RESV_WALK_HOLDING  open and not expired at `at`: what a budget counts
 *   AI_RESV_WALK_LIVE     those, and any being settled: what keeps an entry
 *                         alive, and what a save keeps
 * The reservation returned may be freed before the next call.  Caller holds
 * the entry's partition lock.
 */
typedef enum AiResvWalk
{
	AI_RESV_WALK_ALL,
	AI_RESV_WALK_HOLDING,
	AI_RESV_WALK_LIVE
} AiResvWalk;

typedef struct AiResvIter
{
	int32		next;			/* slot to visit next, or -1 */
	AiResvWalk	walk;
	TimestampTz at;
} AiResvIter;

extern void ai_resv_iter_init(AiResvIter *it, const AiEntry *e, AiResvWalk walk,
							  TimestampTz at);
extern AiReservation *ai_resv_iter_next(AiResvIter *it, int32 *slot);
extern int32 ai_resv_find(const AiEntry *entry, int64 id);
extern int64 ai_resv_create(AiEntry *entry, AiMoney amount, TimestampTz now,
							TimestampTz expires_at, int32 *slot);
extern bool ai_resv_restore(AiEntry *entry, int64 id, AiMoney amount, TimestampTz expires_at,
							int32 *slot);
extern void ai_resv_free(AiEntry *entry, int32 slot);
extern bool ai_resv_shadow(AiEntry *account, int32 primary, int32 *slot);
extern void ai_resv_free_shadows(int64 id, TimestampTz now);
extern void ai_resv_free_shadows_of(Oid dbid, int64 id, TimestampTz now);
extern void ai_resv_unreserve(AiEntry *entry, AiMoney amount);
extern AiMoney ai_resv_held(const AiEntry *entry, TimestampTz after, int32 *count);

/* What ai_resv_release found. */
typedef enum AiReleaseResult
{
	AI_RELEASE_DONE,			/* it was open: its estimate is given back */
	AI_RELEASE_EXPIRED,			/* it had expired (held nothing): freed */
	AI_RELEASE_SETTLING,		/* a record in an open transaction settles it */
	AI_RELEASE_NOT_FOUND		/* released, settled, expired and swept, or never ours */
} AiReleaseResult;

extern int	ai_resv_accounts(const AiUser *u, int64 id, AiKey *keys, bool *ordered);
extern AiReleaseResult ai_resv_release(int64 id, TimestampTz now, const AiKey *owner,
									   AiKey *released);
extern TimestampTz ai_resv_extend(int64 id, const AiKey *owner, TimestampTz now,
								  TimestampTz until, bool *settling, AiReservation *copy,
								  AiKey *shadows, int *nshadows);
extern AiMoney ai_resv_open_amount(AiEntry *entry, TimestampTz now);
extern int32 ai_resv_open_count(TimestampTz now);
extern void ai_verify(List **problems);

#endif							/* AI_RESERVATIONS_H */
