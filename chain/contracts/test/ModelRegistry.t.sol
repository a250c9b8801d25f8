// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TestBase} from "./TestBase.sol";

contract ModelRegistryTest is TestBase {
    ModelRegistry internal reg;
    bytes32 internal constant K1 = keccak256("model-1");
    bytes32 internal constant K2 = keccak256("model-2");
    bytes32 internal PUBLISHER;
    bytes32 internal ANCHORER;

    event Registered(bytes32 indexed key, address indexed publisher, string name, string uri);
    event Deployed(bytes32 indexed nameHash, bytes32 indexed key, uint64 version, string deployment);
    event Revoked(bytes32 indexed key, address indexed by, string reason);
    event Anchored(bytes32 indexed merkleRoot, bytes32 indexed streamId, address indexed anchorer,
                   bytes32 modelKey, uint64 firstSeq, uint64 lastSeq);
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed by);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    bytes32 internal constant CAM0 = keccak256("cam0");

    function setUp() public {
        reg = new ModelRegistry();
        PUBLISHER = reg.PUBLISHER();
        ANCHORER = reg.ANCHORER();
    }

    function _outsider(address who) internal view {
        vm.assume(who != address(this) && who != address(0));
        vm.assume(!reg.hasRole(PUBLISHER, who) && !reg.hasRole(ANCHORER, who));
    }

    // ------------------------------------------------------------ roles

    function testFuzz_NoRoleCannotRegister(address who, bytes32 key) public {
        _outsider(who);
        vm.assume(key != bytes32(0));
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, PUBLISHER, who));
        reg.register(key, "m", "");
    }

    function testFuzz_NoRoleCannotDeployOrRevoke(address who) public {
        _outsider(who);
        reg.register(K1, "m", "");
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, PUBLISHER, who));
        reg.deploy("d", K1);
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, PUBLISHER, who));
        reg.revoke(K1, "r");
    }

    function testFuzz_NoRoleCannotAnchor(address who, bytes32 root, uint64 a, uint64 b) public {
        _outsider(who);
        reg.register(K1, "m", "");
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, ANCHORER, who));
        reg.anchor(root, CAM0, a, b, K1);
    }

    function testFuzz_OnlyOwnerManagesRoles(address who, address target) public {
        _outsider(who);
        vm.assume(target != address(0));
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotOwner.selector, who));
        reg.grantRole(PUBLISHER, target);
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotOwner.selector, who));
        reg.revokeRole(PUBLISHER, address(this));
    }

    function testFuzz_GrantedPublisherCanPublishUntilRemoved(address who, bytes32 key) public {
        _outsider(who);
        vm.assume(key != bytes32(0));
        reg.grantRole(PUBLISHER, who);
        vm.prank(who);
        reg.register(key, "m", "");
        (bool registered,,, address publisher,) = reg.status(key);
        assertTrue(registered, "registered");
        assertEq(publisher, who, "publisher");
        reg.revokeRole(PUBLISHER, who);
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, PUBLISHER, who));
        reg.register(keccak256(abi.encode(key)), "m", "");
    }

    function test_UnknownRoleRefused() public {
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownRole.selector, bytes32("x")));
        reg.grantRole(bytes32("x"), address(1));
    }

    // ------------------------------------------------------------ register / revoke

    function testFuzz_ReRegisterFails(bytes32 key, string calldata name, string calldata uri) public {
        vm.assume(key != bytes32(0) && bytes(name).length > 0);
        vm.expectEmit(true, true, false, true);
        emit Registered(key, address(this), name, uri);
        reg.register(key, name, uri);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.KeyAlreadyRegistered.selector, key));
        reg.register(key, name, uri);
        // not even after revocation
        reg.revoke(key, "gone");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.KeyAlreadyRegistered.selector, key));
        reg.register(key, "other", "");
    }

    function testFuzz_RevokedKeyNeverDeployedOrAnchored(bytes32 key, string calldata reason, bytes32 root)
        public
    {
        vm.assume(key != bytes32(0) && root != bytes32(0));
        reg.register(key, "m", "");
        reg.deploy("d", key);
        vm.expectEmit(true, true, false, true);
        emit Revoked(key, address(this), reason);
        reg.revoke(key, reason);
        (bool registered, bool revoked, string memory why,,) = reg.status(key);
        assertTrue(registered && revoked, "revoked");
        assertEq(keccak256(bytes(why)), keccak256(bytes(reason)), "reason");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.KeyRevoked.selector, key));
        reg.deploy("other", key);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.KeyRevoked.selector, key));
        reg.anchor(root, CAM0, 0, 1, key);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.KeyRevoked.selector, key));
        reg.revoke(key, "again");
    }

    function test_UnknownKeyAndDeployment() public {
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownKey.selector, K1));
        reg.deploy("d", K1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownKey.selector, K1));
        reg.revoke(K1, "r");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownDeployment.selector, "d"));
        reg.current("d");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.ZeroKey.selector));
        reg.register(bytes32(0), "m", "");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.EmptyName.selector));
        reg.register(K1, "", "");
    }

    // ------------------------------------------------------------ deploy

    function testFuzz_DeployVersionsOnlyIncrease(uint8 n, uint256 back) public {
        n = uint8(bound(n, 2, 24));
        bytes32[] memory keys = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            keys[i] = keccak256(abi.encode("k", i));
            reg.register(keys[i], "m", "");
            vm.expectEmit(true, true, false, true);
            emit Deployed(keccak256("carla-enet"), keys[i], uint64(i + 1), "carla-enet");
            uint64 v = reg.deploy("carla-enet", keys[i]);
            assertEq(v, i + 1, "version increments by one");
            (bytes32 cur, uint64 cv) = reg.current("carla-enet");
            assertEq(cur, keys[i], "current key");
            assertEq(cv, i + 1, "current version");
        }
        uint256 j = back % (n - 1); // any earlier key
        vm.expectRevert(abi.encodeWithSelector(
            ModelRegistry.RollbackRefused.selector, "carla-enet", keys[j], uint64(n)));
        reg.deploy("carla-enet", keys[j]);
        vm.expectRevert(abi.encodeWithSelector(
            ModelRegistry.AlreadyCurrent.selector, "carla-enet", keys[n - 1]));
        reg.deploy("carla-enet", keys[n - 1]);
        (, uint64 after_) = reg.current("carla-enet");
        assertEq(after_, n, "refusals leave the version alone");
    }

    // ------------------------------------------------------------ anchor

    function testFuzz_Anchor(bytes32 root, bytes32 stream, uint64 a, uint64 b, address device)
        public
    {
        vm.assume(root != bytes32(0) && stream != bytes32(0) && device != address(0));
        reg.register(K1, "m", "");
        reg.grantRole(ANCHORER, device);
        if (a > b) {
            vm.expectRevert(abi.encodeWithSelector(ModelRegistry.BadSeqRange.selector, a, b));
            reg.anchor(root, stream, a, b, K1);
            return;
        }
        vm.expectEmit(true, true, true, true);
        emit Anchored(root, stream, device, K1, a, b);
        vm.prank(device);
        reg.anchor(root, stream, a, b, K1);
        (bytes32 key, bytes32 sid, address by, uint64 first, uint64 last, uint64 blk) = reg.anchorOf(root);
        assertEq(key, K1, "key");
        assertEq(sid, stream, "stream");
        assertEq(by, device, "the sender is recorded as the anchoring device");
        assertEq(first, a, "first");
        assertEq(last, b, "last");
        assertEq(blk, block.number, "block");
        assertEq(reg.streamAnchorCount(stream), 1, "counted for its stream");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.RootAlreadyAnchored.selector, root));
        reg.anchor(root, stream, a, b, K1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.ZeroKey.selector));
        reg.anchor(keccak256(abi.encode(root)), bytes32(0), a, b, K1);
    }

    function testFuzz_AnchorNeedsRegisteredKey(bytes32 key, bytes32 root) public {
        vm.assume(root != bytes32(0));
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownKey.selector, key));
        reg.anchor(root, CAM0, 0, 0, key);
    }

    // ------------------------------------------------------------ ownership

    function testFuzz_TwoStepOwnershipStripsTheOldOwnersRoles(address next, address who) public {
        vm.assume(next != address(0) && next != address(this) && who != next);
        reg.transferOwnership(next);
        assertEq(reg.owner(), address(this), "nothing changes before acceptance");
        assertEq(reg.pendingOwner(), next, "pending");
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotPendingOwner.selector, who));
        reg.acceptOwnership();
        vm.expectEmit(true, true, false, true);
        emit RoleRevoked(PUBLISHER, address(this), next);
        vm.expectEmit(true, true, false, true);
        emit RoleRevoked(ANCHORER, address(this), next);
        vm.expectEmit(true, true, false, true);
        emit OwnershipTransferred(address(this), next);
        vm.prank(next);
        reg.acceptOwnership();
        assertEq(reg.owner(), next, "owner");
        assertEq(reg.pendingOwner(), address(0), "pending cleared");
        assertTrue(!reg.hasRole(PUBLISHER, address(this)) && !reg.hasRole(ANCHORER, address(this)),
                   "the old owner keeps no role");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.MissingRole.selector, PUBLISHER, address(this)));
        reg.register(K1, "m", "");
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotOwner.selector, address(this)));
        reg.grantRole(PUBLISHER, address(this));
    }

    // ------------------------------------------------------------ helpers

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + (x % (hi - lo + 1));
    }
}
