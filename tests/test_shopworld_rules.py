"""Every relevance rule of docs/relevance_rules.md on handcrafted (query intent, item) pairs."""

import pytest

from she_jax.data.shopworld import Item, QueryIntent, judge, label_from_checks


def _intent(**fields):
    base = dict(query_type="category", category="running shoes", parent="athletic shoes")
    return QueryIntent(**{**base, **fields})


def _item(**fields):
    base = dict(category="running shoes", parent="athletic shoes", brand="kovani", tier="budget")
    return Item(**{**base, **fields})


def _label_rule(intent, item):
    judgment = judge(intent, item)
    return judgment.label, judgment.rule


def test_r1_unrelated_category_is_l1_and_skips_attribute_checks():
    intent = _intent(query_type="brand", brand="kovani")
    judgment = judge(intent, _item(category="hiking boots", parent="boots"))
    assert (judgment.label, judgment.rule, judgment.category_match) == ("L1", "R1", "none")
    assert judgment.checks == ()
    # Another top-level category, even with the right brand written in the title.
    assert _label_rule(intent, _item(category="frying pans", parent="cookware",
                                     title="kovani frying pans running shoes")) == ("L1", "R1")


def test_r1_category_relation():
    assert judge(_intent(), _item()).category_match == "exact"
    assert judge(_intent(), _item(category="trail running shoes")).category_match == "sibling"


def test_r2_brand_mismatch_is_l2_even_when_title_names_the_brand():
    intent = _intent(query_type="brand", brand="zelto")
    assert _label_rule(intent, _item(brand="zelto")) == ("L4", "R10")
    assert _label_rule(intent, _item(brand="kovani", title="kovani running shoes zelto style")) \
        == ("L2", "R2")


def test_r3_key_attribute_and_spec_mismatch_is_l2():
    intent = _intent(query_type="attribute", attributes=(("color", "red"), ("gender", "women")))
    assert _label_rule(intent, _item(attributes=(("color", "red"), ("gender", "women")))) \
        == ("L4", "R10")
    assert _label_rule(intent, _item(attributes=(("color", "blue"), ("gender", "women")))) \
        == ("L2", "R3")
    phone = dict(category="smartphones", parent="mobile devices")
    spec_query = _intent(query_type="attribute", attributes=(("storage", "256gb"),), **phone)
    assert _label_rule(spec_query, _item(attributes=(("storage", "128gb"),), **phone)) \
        == ("L2", "R3")


def test_r4_negation():
    no_brand = _intent(query_type="negation", excluded=("brand", "zelto"))
    assert _label_rule(no_brand, _item(brand="zelto")) == ("L2", "R4")
    # The excluded brand written in another brand's title does not make it that brand.
    assert _label_rule(no_brand, _item(brand="kovani", title="kovani running shoes zelto style")) \
        == ("L4", "R10")
    no_leather = _intent(query_type="negation", excluded=("material", "leather"))
    assert _label_rule(no_leather, _item(attributes=(("material", "leather"),))) == ("L2", "R4")
    assert _label_rule(no_leather, _item(attributes=(("material", "faux leather"),))) \
        == ("L4", "R10")
    # A title silent on the excluded material cannot be confirmed: related, not excellent.
    assert _label_rule(no_leather, _item()) == ("L3", "R9")


def test_r5_affordable_alternative():
    intent = _intent(query_type="alternative", reference_brand="zelto")
    assert _label_rule(intent, _item(brand="zelto", tier="premium")) == ("L2", "R5")
    assert _label_rule(intent, _item(brand="pramo", tier="premium")) == ("L2", "R5")
    assert _label_rule(intent, _item(brand="kovani", tier="budget",
                                     title="kovani running shoes zelto dupe")) == ("L4", "R10")


def test_r6_knowledge_constraints_are_checked_like_stated_ones():
    phone = dict(category="smartphones", parent="mobile devices")
    chip_query = _intent(query_type="knowledge", attributes=(("chip", "nova t7"),), **phone)
    # The title names only the model; the chip comes from the model -> chip fact.
    has_chip = _item(attributes=(("chip", "nova t7"),), model="zephyr x9", title="zephyr x9",
                     **phone)
    assert _label_rule(chip_query, has_chip) == ("L4", "R10")
    assert _label_rule(chip_query, _item(attributes=(("chip", "kelo a2"),), **phone)) \
        == ("L2", "R3")
    line_query = _intent(query_type="knowledge", brand="zelto", product_line="aerostride")
    assert _label_rule(line_query, _item(brand="zelto", title="aerostride running shoes")) \
        == ("L4", "R10")
    assert _label_rule(line_query, _item(brand="kovani")) == ("L2", "R2")
    charger = dict(category="chargers", parent="phone accessories")
    connector_query = _intent(query_type="knowledge", attributes=(("connector", "flexport"),),
                              compatible_model="zephyr x9", **charger)
    assert _label_rule(connector_query, _item(attributes=(("connector", "usb-c"),), **charger)) \
        == ("L2", "R3")


def test_r7_sibling_with_constraints_holding_is_l3_and_violation_wins():
    intent = _intent(query_type="brand", brand="kovani")
    sibling = dict(category="trail running shoes")
    assert _label_rule(intent, _item(**sibling)) == ("L3", "R7")
    assert _label_rule(intent, _item(brand="zelto", **sibling)) == ("L2", "R2")
    assert _label_rule(_intent(), _item(**sibling)) == ("L3", "R7")


def test_r8_minor_attribute_mismatch_is_l3():
    intent = _intent(query_type="attribute", attributes=(("color", "red"), ("style", "vintage")))
    assert _label_rule(intent, _item(attributes=(("color", "red"), ("style", "sporty")))) \
        == ("L3", "R8")
    material = _intent(query_type="attribute", attributes=(("material", "mesh"),))
    assert _label_rule(material, _item(attributes=(("material", "suede"),))) == ("L3", "R8")
    # A key violation outranks a minor one.
    assert _label_rule(intent, _item(attributes=(("color", "blue"), ("style", "sporty")))) \
        == ("L2", "R3")


def test_r9_unspecified_key_attribute_is_l3():
    intent = _intent(query_type="attribute", attributes=(("color", "red"), ("size", "42")))
    assert _label_rule(intent, _item(attributes=(("color", "red"),))) == ("L3", "R9")


def test_r10_everything_holds_is_l4():
    assert _label_rule(_intent(), _item()) == ("L4", "R10")


@pytest.mark.parametrize("category, checks, expected", [
    ("none", [("brand match", "no")], ("L1", "R1")),
    ("exact", [("style match", "no"), ("exclusion respected", "no")], ("L2", "R4")),
    ("sibling", [("cheaper alternative", "no")], ("L2", "R5")),
    ("sibling", [("style match", "no"), ("color match", "unspecified")], ("L3", "R7")),
    ("exact", [("style match", "no"), ("color match", "unspecified")], ("L3", "R8")),
    ("exact", [("color match", "unspecified"), ("brand match", "yes")], ("L3", "R9")),
    ("exact", [], ("L4", "R10")),
])
def test_label_from_checks_precedence(category, checks, expected):
    assert label_from_checks(category, checks) == expected


def test_label_from_checks_rejects_unknown_values():
    with pytest.raises(ValueError, match="category match"):
        label_from_checks("close", [])
    with pytest.raises(ValueError, match="outcome"):
        label_from_checks("exact", [("color match", "maybe")])
